#!/usr/bin/env bash
# Idempotent set-up of a fresh machine (Debian 12, Python 3.11): Bazel from
# Debian's bazel-bootstrap, and the pinned Python environment in ./.venv.
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[bootstrap] installing Bazel (Debian bazel-bootstrap)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap) >/dev/null
  else
    echo "[bootstrap] Bazel is missing: run 'sudo apt-get install bazel-bootstrap'." >&2
  fi
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "[bootstrap] $PY is $("$PY" --version 2>&1); TFF 0.87 with the pinned lock needs Python 3.11." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv

want=$(sha256sum requirements.lock | cut -d' ' -f1)
have=$(cat .venv/.lock.sha256 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[bootstrap] installing the pinned Python environment into .venv (a few minutes, once)..."
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.lock
  echo "$want" > .venv/.lock.sha256
fi

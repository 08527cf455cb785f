#!/usr/bin/env bash
# Quick start command 2: set up (idempotent) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
source tools/env.sh
exec python -m pytest tests "$@"

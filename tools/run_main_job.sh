#!/usr/bin/env bash
# Quick start command 1: set up (idempotent), then the main job on the real
# Stack Exchange dumps through Bazel: FedAvg, FedAlt and FedSim, and the report.
# Flags after the command go to //runners:main_job (e.g. --rounds=40).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
source tools/env.sh
status=0
bazel run //runners:main_job -- "$@" || status=$?
bazel shutdown 2>/dev/null || true
exit $status

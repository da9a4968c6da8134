#!/usr/bin/env bash
# Sets up the environment, then runs the main job on the embedded defaults: one full trial
# (public pretraining, cached after the first run → DP fine-tune at ε=5 → DDIM sampling → evaluation).
# Extra arguments go to `dpsearch run`, e.g. `bash scripts/main.sh --eps 1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${DPSEARCH_VENV:-.venv}"
if [ $# -eq 0 ]; then set -- --eps 5; fi
exec "$VENV/bin/dpsearch" run "$@"

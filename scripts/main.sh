#!/usr/bin/env bash
# Sets up the environment, then runs the main job on the embedded defaults: a Ray Tune + Optuna sweep
# (`dpsearch sweep --eps 5` on search_spaces/mnist.yaml: public pretraining, cached after the first run;
# a DP validation generator; 8 DP fine-tune trials, each (5, 1e-5)-DP; a table sorted by objective).
# Extra arguments go to `dpsearch sweep`, e.g. `bash scripts/main.sh --eps 1 --trials 16`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${DPSEARCH_VENV:-.venv}"
if [ $# -eq 0 ]; then set -- --eps 5; fi
exec "$VENV/bin/dpsearch" sweep "$@"

#!/usr/bin/env bash
# Sets up the environment, then runs the main job on the embedded defaults: `dpsearch sweep --eps 5` on
# search_spaces/mnist.yaml, a Ray Tune + Optuna search whose released model is (5, δ)-DP for the whole search
# (disjoint slices: 8 trials on a tuning slice, scored by DP counts on a validation slice; the selected
# configuration trained on the final slice; free guidance chosen; a 10,000-image synthetic release with its data card).
# The default pretrained model ships with the package (trained on public digits only).
# Extra arguments replace the defaults and go to `dpsearch sweep`, e.g. `bash scripts/main.sh --eps 1 --trials 16`,
# `bash scripts/main.sh --eps 5 --plan` (the design only) or `bash scripts/main.sh --eps-per-trial 5` (every trial
# (5, δ)-DP on all the data: the per-trial protocol, whose released model's ε is larger).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${DPSEARCH_VENV:-.venv}"
if [ $# -eq 0 ]; then set -- --eps 5; fi
exec "$VENV/bin/dpsearch" sweep "$@"

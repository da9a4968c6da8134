#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv and installs dpsearch with its test extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DPSEARCH_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.dpsearch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing dpsearch and its dependencies (torch==2.14.1, torchvision==0.29.1, ...)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # pip byte-compiles every file it installs (torch, Ray, MLflow, …: a fresh install here took 108 s with it, 44-62 s
  # without); Python compiles the modules it imports on first use instead and keeps them (+9 s once). Where
  # PYTHONDONTWRITEBYTECODE is set Python keeps nothing, so pip compiles as before.
  nocompile=(); [ -z "${PYTHONDONTWRITEBYTECODE:-}" ] && nocompile=(--no-compile)
  "$VENV/bin/python" -m pip install --quiet ${nocompile[@]+"${nocompile[@]}"} -e ".[test]"
  touch "$stamp"
fi
"$VENV/bin/python" -c "import torch, torchvision, diffusers, opacus, cleanfid, dp_accounting, peft, transformers; print(f'[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, diffusers {diffusers.__version__}, opacus {opacus.__version__}, peft {peft.__version__}, transformers {transformers.__version__}')"

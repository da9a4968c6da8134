#!/usr/bin/env bash
# Sets up the environment, then runs the whole test suite. `.ci/run` calls exactly this.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
VENV="${DPSEARCH_VENV:-.venv}"
# The MLflow UI test drives Debian's headless Chromium through chromedriver (no browser download).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "[test] installing Debian's chromium and chromium-driver for the MLflow UI test"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver \
    >/dev/null) || { echo "could not install chromium + chromium-driver (apt-get); install them and run again" >&2; exit 1; }
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"

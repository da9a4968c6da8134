#!/usr/bin/env bash
# Sets up the environment, then runs the whole test suite. `.ci/run` calls exactly this.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
VENV="${DPSEARCH_VENV:-.venv}"
# Debian packages the tests drive for real: headless Chromium + chromedriver (the MLflow UI and report
# tests, no browser download), OpenSSH server + rsync (`ray up` over SSH on 127.0.0.1).
need=""
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -x /usr/bin/chromedriver ] || need="$need chromium-driver"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v rsync >/dev/null || need="$need rsync"
if [ -n "$need" ]; then
  echo "[test] installing Debian packages:$need"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null) \
    || { echo "could not install$need (apt-get); install them and run again" >&2; exit 1; }
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"  # the slowest tests, to keep CI short
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"

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
# Two passes: the suite in parallel workers (pytest-xdist; DPSEARCH_TEST_WORKERS, default 2, one per core here: three
# were slower, docs/performance.md),
# then the tests marked `serial` alone (e.g. `ray up` where its `ray down` could stop other tests' Rays). Extra arguments
# (paths, -k, -x) go to both passes; the slowest tests are listed to keep CI short.
# The serial pass runs only when the parallel one set serial tests aside (tests/conftest.py notes it): where the
# machine allows a PID namespace, the one serial test runs beside the others and a second pytest would find nothing.
PYTEST=("$VENV/bin/python" -m pytest -q -p no:cacheprovider)
left="$(mktemp)"; rm -f "$left"
DPSEARCH_SERIAL_LEFT="$left" "${PYTEST[@]}" -n "${DPSEARCH_TEST_WORKERS:-2}" --dist loadgroup -m "not serial" --durations=15 "$@"
rc1=$?
rc2=5
if [ -e "$left" ] || [ "$rc1" -gt 1 ]; then
  "${PYTEST[@]}" -m serial --durations=5 "$@"
  rc2=$?
fi
rm -f "$left"
if [ "$rc1" -eq 5 ] && [ "$rc2" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
# A pass that collected nothing (5) is fine only when the other ran tests (e.g. a path with no serial test).
[ "$rc1" -eq 5 ] && rc1=0
[ "$rc2" -eq 5 ] && rc2=0
[ "$rc1" -ne 0 ] && exit "$rc1"
exit "$rc2"

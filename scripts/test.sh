#!/usr/bin/env bash
# Test runwatch in one command, on a fresh Debian 12 machine or an already set-up one:
# installs runwatch with its test tools, starts the real servers the tests use
# (scripts/services-up.sh: PostgreSQL, MariaDB, RabbitMQ, a single-node Slurm, an HTCondor
# personal pool and XRootD; installed with apt-get if missing), then runs the linters, the
# type checker and the tests. Extra arguments go to pytest:
#
#   bash scripts/test.sh
#   bash scripts/test.sh tests/workflow -x -k lease
#
# With RUNWATCH_TEST_REQUIRE_SERVICES=1 (set here) a test that needs a server fails rather
# than skips when the server is missing, so a pass means every test ran. The servers can
# be pointed elsewhere by setting their RUNWATCH_TEST_* variables (tests/conftest.py)
# before running this.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

phase_names=()
phase_seconds=()
phase_start=$SECONDS
current=""

begin() {
  end_phase
  current=$1
  phase_start=$SECONDS
  echo
  echo "=== $current"
}

end_phase() {
  if [ -n "$current" ]; then
    phase_names+=("$current")
    phase_seconds+=($((SECONDS - phase_start)))
    current=""
  fi
}

failed=()

# Run a check; on failure note it and carry on, so one run reports every problem.
check() {
  "$@" || failed+=("$current: $*")
}

summary() {
  local rc=$? i
  end_phase
  echo
  echo "=== timing"
  for i in "${!phase_names[@]}"; do
    printf '  %-10s %5ss\n' "${phase_names[$i]}" "${phase_seconds[$i]}"
  done
  printf '  %-10s %5ss\n' total "$SECONDS"
  if [ "$rc" -eq 0 ]; then
    echo "=== all passed"
  else
    for i in "${failed[@]}"; do echo "failed: $i"; done
    echo "=== FAILED (exit $rc)"
  fi
}
trap summary EXIT

begin install
"$PYTHON" -m pip install -q -e '.[test]'

# The browser tests drive Debian's Chromium (never a browser downloaded by playwright) and
# need the front end built (JSROOT from npm into src/runwatch/web/static/vendor/).
begin frontend
source scripts/lib/apt.sh
apt_install chromium
bash scripts/build-web.sh

begin services
# Every server the tests use, and its VAR=value for them (a variable already set wins, so
# the servers can be pointed elsewhere).
SERVICES=(postgres mariadb rabbitmq slurm htcondor xrootd)
bash scripts/services-up.sh "${SERVICES[@]}"
while IFS='=' read -r name value; do
  [ -n "${!name:-}" ] || export "$name=$value"
done < <(bash scripts/services-up.sh --print-env "${SERVICES[@]}")
export RUNWATCH_TEST_REQUIRE_SERVICES=1
env | grep '^RUNWATCH_TEST_' | sort | sed 's/^/  using /'

# Lint only the folders that exist (ruff fails on a missing path).
lint_paths=()
for path in src tests bench scripts; do
  [ -e "$path" ] && lint_paths+=("$path")
done

begin ruff
check "$PYTHON" -m ruff check "${lint_paths[@]}"
check "$PYTHON" -m ruff format --check "${lint_paths[@]}"

begin mypy
check "$PYTHON" -m mypy

begin pytest
check "$PYTHON" -m pytest "$@"

end_phase
[ ${#failed[@]} -eq 0 ]

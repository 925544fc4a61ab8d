#!/usr/bin/env bash
# The test suite as `make test` runs it, after lint and types, in two pytest runs:
#   1. the unit tests, in 2 processes;
#   2. the integration tests against the local stack, side by side in TEST_PROCESSES
#      processes (default 4): they mostly wait on workers, brokers and timeouts, and each
#      has its own consumer group, devices and topics; those that share the replica, the
#      pgBackRest repository or maintenance runs take turns (tests/stack.py: exclusive),
#      and those that stop PostgreSQL, pgBouncer or the broker stop their own
#      (tests/conftest.py: private_database, private_broker).
# Arguments go to every run (PYTEST_ARGS='-k name'). A run that selects nothing is skipped;
# if none ran a test, the suite fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ran=0

phase() {  # phase TITLE PYTEST-ARGUMENTS...
    local title=$1 status
    shift
    printf '\n===== %s\n' "$title"
    "$PY" -m pytest "$@"
    status=$?
    case $status in
        0) ran=1 ;;
        5) echo "(no test of this run selected)" ;;
        *) exit "$status" ;;
    esac
}

phase "unit tests" -m "not integration" -n 2 "$@"
phase "integration tests, side by side" -m integration -n "${TEST_PROCESSES:-4}" "$@"
[[ $ran == 1 ]] || { echo "no tests ran" >&2; exit 1; }

#!/usr/bin/env bash
# The test suite as `make test` runs it, after lint and types, in three pytest runs:
#   1. the unit tests, in 2 processes;
#   2. the integration tests against the local stack, side by side in TEST_PROCESSES
#      processes (default 4): they mostly wait on workers, brokers and timeouts, and each
#      has its own consumer group, devices and topics; those that share the replica, the
#      pgBackRest repository or maintenance runs take turns (tests/stack.py: exclusive);
#   3. the integration tests marked serial, one at a time with nothing beside them: they
#      stop or restart a service the others use (PostgreSQL, pgBouncer).
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
phase "integration tests, side by side" -m "integration and not serial" \
    -n "${TEST_PROCESSES:-4}" "$@"
phase "integration tests that stop a shared service, alone" -m "integration and serial" "$@"
[[ $ran == 1 ]] || { echo "no tests ran" >&2; exit 1; }

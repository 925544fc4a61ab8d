#!/usr/bin/env bash
# `make run`: one worker and the device simulator against the running local stack.
# Ctrl-C (or the simulator ending) stops both. Extra simulator options: SIMULATE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
FAUST=.venv/bin/faust
mkdir -p .stack/log
web_port=${WEB_PORT:-6066}

"$FAUST" -A streams.app worker -l info >.stack/log/worker.log 2>&1 &
worker=$!
simulator=
cleanup() {
    trap - INT TERM EXIT
    [ -n "$simulator" ] && kill "$simulator" 2>/dev/null || true
    kill "$worker" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "stopped the worker and the simulator"
}
trap cleanup INT TERM EXIT

cat <<MSG
worker (pid $worker) log: .stack/log/worker.log
  dashboard:  http://127.0.0.1:${web_port}/dashboard
  lag:        http://127.0.0.1:${web_port}/pipeline/lag
  throughput: http://127.0.0.1:${web_port}/pipeline/throughput
  rows:       psql postgresql://devicestream:devicestream@127.0.0.1:6432/devicestream -c 'select count(*) from readings'
Ctrl-C stops the worker and the simulator.
MSG
# shellcheck disable=SC2086
"$FAUST" -A streams.app simulate ${SIMULATE_ARGS:---devices 100 --metrics 5 --rate 2000} &
simulator=$!
# Whichever ends first (the simulator's count or duration, or a worker that failed) ends both.
wait -n "$worker" "$simulator" || true
if ! kill -0 "$worker" 2>/dev/null; then
    echo "the worker exited; see .stack/log/worker.log" >&2
    tail -n 20 .stack/log/worker.log >&2
fi

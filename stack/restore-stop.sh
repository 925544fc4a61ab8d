#!/usr/bin/env bash
# stack/restore-stop.sh -- stops the cluster that `make restore` started on PORT and
# removes its folder restore-PORT/ (`make restore-stop PORT=...`). Only such a folder
# is ever touched: the stack's own cluster and the backup repository are not.
#
# Needs root. Usage: bash stack/restore-stop.sh PORT
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root
PORT=${1:-}
[[ $PORT =~ ^[0-9]+$ ]] || die "usage: make restore-stop PORT=<port of a make restore>"
DIR="$(pg_state_dir)/restore-$PORT"
[[ -d $DIR ]] || die "no restored cluster for port $PORT ($DIR does not exist)"

pid=$(head -n1 "$DIR/pgdata/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true)
if pid_alive "$pid"; then
    log "stopping the restored cluster on port $PORT (pid $pid)"
    as_postgres "$(pg_bindir "$(pg_major)")/pg_ctl" -D "$DIR/pgdata" stop -m fast >/dev/null ||
        die "could not stop the restored cluster (pid $pid)"
fi
rm -rf "$DIR"
log "removed $DIR"

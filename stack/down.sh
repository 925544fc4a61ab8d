#!/usr/bin/env bash
# stack/down.sh -- stops the local stack (`make stack-down`): Tansu, pgBouncer, the read
# replica if one runs, and the PostgreSQL cluster MAJOR/devicestream, waiting until ports 9092, 6432 and
# 55432 are closed. Idempotent (nothing running is fine). Data is kept: the
# database survives a stack-down/stack-up; the broker's memory storage does not.
# Also stops a Tansu or pgBouncer left on those ports by another clone of the repo.
#
# Needs root. Usage: bash stack/down.sh
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root
acquire_lock

# Tansu takes seconds to leave with clients connected: stop it alongside the others.
stop_service tansu "$TANSU_PIDFILE" "$KAFKA_PORT" tansu TERM &
tansu_job=$!

if [[ -x $PGBOUNCER_BIN ]]; then
    pgb_pidfile="$(pg_state_dir)/pgbouncer/pgbouncer.pid"
    stop_service pgbouncer "$pgb_pidfile" "$PGB_PORT" pgbouncer "$(pgbouncer_stop_signal)"
fi

# the read replica (make stack-up REPLICA=1) first: it follows the cluster
replica_data="$(pg_state_dir)/replica/pgdata"
replica_pid=$(head -n1 "$replica_data/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true)
if pid_alive "$replica_pid"; then
    log "stopping the read replica (pid $replica_pid)"
    as_postgres "$(pg_bindir "$(pg_major)")/pg_ctl" -D "$replica_data" stop -m fast >/dev/null ||
        die "could not stop the read replica (pid $replica_pid)"
fi

while read -r major _; do
    [[ -n $major ]] && pg_stop_cluster "$major"
done < <(pg_our_clusters)
wait_port_closed "$PG_PORT" "$STOP_TIMEOUT" ||
    die "port $PG_PORT is still open (pid $(listener_pid "$PG_PORT")) after stopping the $PG_CLUSTER cluster"

wait "$tansu_job" || die "could not stop Tansu"
log "stack down"

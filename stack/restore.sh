#!/usr/bin/env bash
# stack/restore.sh -- point-in-time restore (`make restore TIME=... PORT=...`): the
# newest backup that ended before TIME, plus the archived WAL replayed up to exactly
# TIME (transactions committed at TIME included), into a new cluster on
# 127.0.0.1:PORT with its data in restore-PORT/ next to the stack's PostgreSQL data.
# The running stack is left untouched, except that its current WAL segment is
# archived first (pg_switch_wal), so that TIME may be as late as the moment of the
# command. The new cluster does not archive (the repository stays the stack's).
# Prints the backup used, the seconds taken and, last, the connection URL.
#
# A TIME before the end of the oldest backup, in the future, or past the end of the
# archived WAL, and a segment missing from the archive, fail with a clear error and
# leave nothing behind. Stop the cluster with `make restore-stop PORT=...`.
#
# Needs root and `make setup`. Usage: bash stack/restore.sh TIME PORT
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root
TIME=${1:-}
PORT=${2:-}
[[ -n $TIME ]] || die "usage: make restore TIME='<RFC 3339, e.g. 2026-12-04T10:00:00Z>' PORT=<port>"
[[ $PORT =~ ^[0-9]+$ ]] && ((PORT >= 1024 && PORT <= 65535)) ||
    die "PORT must be a TCP port in 1024-65535, got '$PORT'"
for taken in "$PG_PORT" "$PGB_PORT" "$KAFKA_PORT"; do
    ((PORT != taken)) || die "PORT $PORT is the local stack's own: pick another"
done
! port_open "$PORT" || die "port $PORT is in use (pid $(listener_pid "$PORT")): pick another"

T0=$SECONDS
MAJOR=$(pg_major)
[[ -n $MAJOR ]] || die "PostgreSQL is not installed: run 'make setup'"
BIN=$(pg_bindir "$MAJOR")
PGSTATE=$(pg_state_dir)
[[ -f $(pgbackrest_conf "$PGSTATE") ]] || die "no pgBackRest configuration: run 'make stack-up' first"
DIR="$PGSTATE/restore-$PORT"
[[ ! -e $DIR ]] || die "$DIR exists: a restore on port $PORT is there already (make restore-stop PORT=$PORT)"

info_json() { pgbackrest_run "$PGSTATE" info --output=json; }

# Recovery stops at the first commit after TIME, and fails when the archive ends before
# one: a marker transaction (it only takes a transaction id) puts a commit after TIME
# into the WAL, and pg_switch_wal sends that segment to the archive.
if pg_cluster_running "$MAJOR"; then
    stack_sql() { as_postgres psql -X -qtA -h /var/run/postgresql -p "$PG_PORT" -d postgres -c "$1"; }
    stack_sql 'SELECT pg_current_xact_id()' >/dev/null
    SEGMENT=$(stack_sql 'SELECT pg_walfile_name(pg_switch_wal())')
    deadline=$((SECONDS + 90))
    until [[ $(stack_sql "SELECT coalesce(last_archived_wal, '') >= '$SEGMENT' FROM pg_stat_archiver") == t ]]; do
        ((SECONDS < deadline)) || die "WAL segment $SEGMENT was not archived within 90 s: see the PostgreSQL log"
        sleep 0.5
    done
fi

PICK=$(info_json | "$VENV_PY" "$STACK_SCRIPTS_DIR/pgbackrest_info.py" pick "$TIME") ||
    die "nothing restored"   # pgbackrest_info.py said why
read -r LABEL TARGET <<<"$PICK"
ARCHIVE_MAX=$(info_json | "$VENV_PY" -c 'import json, sys; print(json.load(sys.stdin)[0]["archive"][-1]["max"])')

FAILED=1
cleanup() {
    if ((FAILED)); then
        stop_restored
        [[ ! -f $DIR/postgresql.log ]] || cp "$DIR/postgresql.log" "$LOG_DIR/restore-$PORT-failed.log"
        rm -rf "$DIR"
    fi
}
stop_restored() {
    local pid
    pid=$(head -n1 "$DIR/pgdata/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true)
    if pid_alive "$pid"; then
        as_postgres "$BIN/pg_ctl" -D "$DIR/pgdata" stop -m immediate >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

log "restoring backup $LABEL and the WAL up to $TARGET into $DIR"
mkdir -p "$DIR/pgdata" "$DIR/socket"
chown -R "$PG_OS_USER:$PG_OS_USER" "$DIR"
chmod 700 "$DIR" "$DIR/pgdata"
pgbackrest_run "$PGSTATE" restore --pg1-path="$DIR/pgdata" --set="$LABEL" --type=time \
    --target="$TARGET" --target-action=promote --archive-mode=off --log-level-console=warn ||
    die "pgbackrest restore failed (log: $LOG_DIR/pgbackrest/)"

write_cluster_conf "$MAJOR" "$DIR/pgdata" "$PORT" "$DIR/socket" "archive_mode = off"

as_postgres "$BIN/pg_ctl" -D "$DIR/pgdata" -l "$DIR/postgresql.log" --no-wait start >/dev/null ||
    die "the restored cluster did not start: see $DIR/postgresql.log"

# The WAL segment after SEGMENT (empty for none); segments are TIMELINE LOG SEG in hex,
# with 2^32 / segment size segments per LOG.
next_segment() {
    [[ -n $1 ]] || return 0
    local bytes per log seg
    bytes=$(as_postgres "$BIN/pg_controldata" "$DIR/pgdata" | sed -n 's/^Bytes per WAL segment: *//p')
    per=$((0x100000000 / bytes))
    log=$((16#${1:8:8}))
    seg=$((16#${1:16:8} + 1))
    if ((seg >= per)); then seg=0; log=$((log + 1)); fi
    printf '%s%08X%08X' "${1:0:8}" "$log" "$seg"
}

# Recovery replays the WAL and promotes at TIME; PostgreSQL stops with "recovery ended
# before configured recovery target was reached" when the archive ends first.
restored_sql() { as_postgres psql -X -qtA -h "$DIR/socket" -p "$PORT" -d postgres -c "$1" 2>/dev/null; }
deadline=$((SECONDS + ${RESTORE_TIMEOUT:-3600}))
SERVER_PID=""
server_gone() {  # the restored postmaster has exited (its pid file is its first act)
    local pid
    pid=$(head -n1 "$DIR/pgdata/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true)
    [[ -z $pid ]] || SERVER_PID=$pid
    [[ -n $SERVER_PID ]] && ! pid_alive "$SERVER_PID"
}
until [[ $(restored_sql 'SELECT NOT pg_is_in_recovery()') == t ]]; do
    if grep -q 'recovery ended before configured recovery target was reached' "$DIR/postgresql.log"; then
        show_log "$DIR/postgresql.log" 12
        last=$(grep -o 'restored log file "[0-9A-F]\{24\}" from archive' "$DIR/postgresql.log" |
            tail -n1 | cut -d'"' -f2 || true)
        missing=$(next_segment "$last")
        if [[ -n $missing && $missing < $ARCHIVE_MAX ]]; then
            die "WAL segment $missing is missing from the archive, which holds segments up to $ARCHIVE_MAX: the WAL after it cannot be replayed, so no TIME after the segment's start can be restored"
        fi
        last_commit=$(sed -n 's/.*last completed transaction was at log time //p' "$DIR/postgresql.log" | tail -n1)
        die "TIME $TIME is past the end of the archived WAL (it ends with segment $ARCHIVE_MAX; last commit in it: ${last_commit:-none})"
    fi
    if server_gone; then
        show_log "$DIR/postgresql.log" 12
        die "recovery failed (log kept in $LOG_DIR/restore-$PORT-failed.log)"
    fi
    ((SECONDS < deadline)) || die "recovery did not reach TIME within ${RESTORE_TIMEOUT:-3600} s (log kept in $LOG_DIR/restore-$PORT-failed.log)"
    sleep 0.5
done

refuse_unreadable_compression "$DIR/socket" "$PORT" "$DB_NAME"
FAILED=0
log "restored in $((SECONDS - T0)) s"
printf 'backup     %s\n' "$LABEL"
printf 'restored   to %s (recovery_target_time)\n' "$TARGET"
printf 'cluster    %s:%s, PostgreSQL %s, data %s\n' "$HOST" "$PORT" "$MAJOR" "$DIR/pgdata"
printf 'seconds    %s\n' "$((SECONDS - T0))"
printf 'stop with  make restore-stop PORT=%s\n' "$PORT"
printf 'postgresql://%s@%s:%s/%s\n' "$DB_USER" "$HOST" "$PORT" "$DB_NAME"

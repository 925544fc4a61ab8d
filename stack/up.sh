#!/usr/bin/env bash
# stack/up.sh -- starts the local stack in the background (`make stack-up`) and
# returns once every service accepts connections:
#
#   PostgreSQL + TimescaleDB  127.0.0.1:55432  own cluster MAJOR/devicestream, data in .stack/pgdata
#   pgBouncer                 127.0.0.1:6432   transaction pooling, files in .stack/pgbouncer
#   Tansu (Kafka API)         127.0.0.1:9092   memory storage, pid in .stack/tansu.pid
#
# Idempotent: a service that already runs with the current settings is left alone.
# Creates the roles devicestream_owner (owner of database devicestream, runs the
# migrations), devicestream (the workers) and devicestream_reader (the query API), each
# with its own name as password, and the timescaledb and pg_stat_statements extensions.
# WAL is archived continuously (at most archive_timeout = 60 s late) into the pgBackRest
# repository (BACKUP_REPO, default backup/ next to the data), whose stanza devicestream is
# created here; `make backup` and `make restore` use it. With REPLICA=1 (`make stack-up
# REPLICA=1`) a streaming replica runs on 127.0.0.1:55433 too (ensure_replica).
# PostgreSQL settings come from stack/pg_tuning.py (computed from this host). Logs:
# .stack/log/.
# If the cluster name devicestream is registered to another clone's data dir,
# that cluster is stopped and unregistered (its data is kept; that clone's next
# stack-up registers it again from its .stack/.../pgconf copy).
#
# Needs root and `make setup` done. Usage: bash stack/up.sh
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=stack/tls.sh
source "$(dirname "${BASH_SOURCE[0]}")/tls.sh"

require_root
acquire_lock
T0=$SECONDS
mkdir -p "$LOG_DIR"

# wait_until DESC LOGFILE CMD...: runs CMD until it succeeds; after READY_TIMEOUT
# seconds (or at once when CMD exits with 99), fails with CMD's last output and
# the end of LOGFILE.
wait_until() {
    local desc=$1 logf=$2 start=$SECONDS out rc
    shift 2
    while true; do
        rc=0
        out=$("$@" 2>&1) || rc=$?
        ((rc == 0)) && return 0
        if ((rc == 99 || SECONDS - start >= READY_TIMEOUT)); then
            log "$desc: not ready after $((SECONDS - start)) s; last attempt said:"
            printf '%s\n' "$out" | tail -n 5 | sed 's/^/  | /' >&2
            show_log "$logf"
            die "$desc did not come up"
        fi
        sleep 0.25
    done
}

# write_file PATH MODE CONTENT: writes (owned by postgres) only when the content
# differs; returns 0 when it changed the file, 1 when it was already so.
write_file() {
    local path=$1 mode=$2 content=$3
    if [[ -f $path ]] && printf '%s\n' "$content" | cmp -s - "$path"; then return 1; fi
    printf '%s\n' "$content" >"$path.tmp"
    chown "$PG_OS_USER:$PG_OS_USER" "$path.tmp"
    chmod "$mode" "$path.tmp"
    mv -f "$path.tmp" "$path"
    return 0
}

psql_super() {  # as the postgres superuser over the cluster's Unix socket
    PGOPTIONS="-c client_min_messages=warning" as_postgres psql -X -q -v ON_ERROR_STOP=1 \
        -h /var/run/postgresql -p "$PG_PORT" "$@"
}

# ---------------------------------------------------------------- PostgreSQL

MAJOR=$(pg_major)
[[ -n $MAJOR ]] || die "PostgreSQL is not installed: run 'make setup'"
PGSTATE=$(pg_state_dir)
PGDATA="$PGSTATE/pgdata"
SERVER_TLS="$PGSTATE/server-tls"
PGCONF_SNAPSHOT="$PGSTATE/pgconf"   # copy of the cluster's /etc config, to re-register the data dir
ETC_DIR="/etc/postgresql/$MAJOR/$PG_CLUSTER"
PG_LOG="$LOG_DIR/postgresql.log"
PGBR_CONF=$(pgbackrest_conf "$PGSTATE")

pg_register_cluster() {
    local v dd pid
    # the name may be taken by another clone's (or another major's) data dir
    while read -r v dd; do
        [[ -n $v ]] || continue
        if [[ $v != "$MAJOR" || $dd != "$PGDATA" ]]; then
            log "cluster $v/$PG_CLUSTER uses $dd (another clone): stopping and unregistering it, its data stays"
            pg_stop_cluster "$v"
            rm -rf "/etc/postgresql/$v/$PG_CLUSTER"
        fi
    done < <(pg_our_clusters)
    if [[ -f $ETC_DIR/postgresql.conf && ! -f $PGDATA/PG_VERSION ]]; then
        log "cluster $MAJOR/$PG_CLUSTER is registered but its data dir $PGDATA is gone: unregistering it"
        rm -rf "$ETC_DIR"
    fi
    [[ -f $ETC_DIR/postgresql.conf ]] && return 0

    pid=$(listener_pid "$PG_PORT")
    [[ -z $pid ]] || die "port $PG_PORT is held by '$(pid_comm "$pid")' (pid $pid), not by cluster $MAJOR/$PG_CLUSTER"
    if [[ -f $PGDATA/PG_VERSION ]]; then
        if [[ $(cat "$PGDATA/PG_VERSION") == "$MAJOR" && -f $PGCONF_SNAPSHOT/postgresql.conf ]] &&
            grep -Fqx "data_directory = '$PGDATA'" <(sed 's/[[:space:]]*#.*//' "$PGCONF_SNAPSHOT/postgresql.conf"); then
            log "registering the existing data dir $PGDATA as cluster $MAJOR/$PG_CLUSTER again"
            mkdir -p "/etc/postgresql/$MAJOR"
            cp -a "$PGCONF_SNAPSHOT" "$ETC_DIR"
            return 0
        fi
        local aside
        aside="$PGDATA.orphan-$(date +%Y%m%d-%H%M%S)"
        log "data dir $PGDATA (PostgreSQL $(cat "$PGDATA/PG_VERSION"), no matching config copy) cannot be reused: moved to $aside"
        mv "$PGDATA" "$aside"
    fi

    log "creating PostgreSQL $MAJOR cluster $PG_CLUSTER in $PGDATA"
    local logopt=()
    if [[ $PGSTATE == "$STACK_DIR" ]]; then
        logopt=(-l "$PG_LOG")
    else
        ln -sfn "/var/log/postgresql/postgresql-$MAJOR-$PG_CLUSTER.log" "$PG_LOG"
    fi
    pg_createcluster "$MAJOR" "$PG_CLUSTER" -p "$PG_PORT" -d "$PGDATA" "${logopt[@]}" \
        --start-conf manual -e UTF8 --locale C.UTF-8 \
        -- --auth-local=peer --auth-host=scram-sha-256 >"$LOG_DIR/pg_createcluster.log" 2>&1 ||
        { show_log "$LOG_DIR/pg_createcluster.log"; die "pg_createcluster failed"; }
}

pg_configure() {  # returns 0 when a setting changed (a running server must restart)
    local changed=1 conf tuning license
    license=$(timescaledb_license "$MAJOR") || exit 1  # it said why
    tuning=$("$VENV_PY" "$STACK_SCRIPTS_DIR/pg_tuning.py" --active-connections 60 --ts-background-workers 8) ||
        die "stack/pg_tuning.py failed"
    conf="# Written by stack/up.sh on every start: edit stack/up.sh or stack/pg_tuning.py, not this file.
listen_addresses = '$HOST'
port = $PG_PORT
max_connections = 200
shared_preload_libraries = 'timescaledb,pg_stat_statements'
timescaledb.telemetry_level = off
timescaledb.license = '$license'
password_encryption = 'scram-sha-256'
# TLS with the local CA's server certificate (stack/tls.sh); clients choose (DB_SSLMODE)
ssl = on
ssl_cert_file = '$SERVER_TLS/server.crt'
ssl_key_file = '$SERVER_TLS/server.key'
ssl_min_protocol_version = 'TLSv1.2'
# server certificate sha256 $(tls_fingerprint "$SERVER_TLS")
# durability: commits are flushed (the pipeline promises exactly-once storage)
synchronous_commit = on
fsync = on
full_page_writes = on
# WAL archiving into the pgBackRest repository: point-in-time recovery (make restore)
wal_level = replica
archive_mode = on
archive_command = 'pgbackrest --config=$PGBR_CONF --stanza=$STANZA archive-push %p'
archive_timeout = 60
$tuning"
    mkdir -p "$ETC_DIR/conf.d"
    grep -Eq "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf\.d'" "$ETC_DIR/postgresql.conf" ||
        printf "\ninclude_dir = 'conf.d'\n" >>"$ETC_DIR/postgresql.conf"
    write_file "$ETC_DIR/conf.d/devicestream.conf" 644 "$conf" && changed=0
    write_file "$ETC_DIR/pg_hba.conf" 640 "# Written by stack/up.sh.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer
local   all       all                      peer
host    all       all       127.0.0.1/32   scram-sha-256
host    all       all       ::1/128        scram-sha-256
host    replication $REPLICATION_USER 127.0.0.1/32 scram-sha-256" && changed=0
    write_file "$ETC_DIR/start.conf" 644 "manual" || true
    return $changed
}

pg_bootstrap_db() {
    # Three roles (docs/security.md#roles): the owner runs the migrations; the workers' role and
    # the read-only one get their privileges from `make migrate` (schema/roles.py).
    local role password
    for role in "$DB_OWNER:$DB_OWNER_PASSWORD" "$DB_USER:$DB_PASSWORD" "$READ_USER:$READ_PASSWORD"; do
        password=${role#*:} role=${role%%:*}
        psql_super -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN;
  END IF;
END \$\$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$password';
SQL
    done
    psql_super -d postgres <<SQL
-- read pg_stat_statements / pg_stat_activity of all sessions, pg_ls_waldir() (for /pipeline/db)
GRANT pg_monitor TO $DB_USER;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_OWNER'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
SQL
    # a database of the single-role days: the workers' role owned it and its tables
    if [[ $(psql_super -d postgres -tAc "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$DB_NAME'") == "$DB_USER" ]]; then
        log "handing database $DB_NAME and its objects from $DB_USER over to $DB_OWNER"
        psql_super -d "$DB_NAME" -c "REASSIGN OWNED BY $DB_USER TO $DB_OWNER"
    fi
    # pg_stat_statements is not a trusted extension: the owner role cannot create it
    psql_super -d "$DB_NAME" <<SQL
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
    # a newer TimescaleDB library than the database's extension: update (own session, first command)
    if [[ $(psql_super -d "$DB_NAME" -tAc "SELECT installed_version <> default_version FROM pg_available_extensions WHERE name = 'timescaledb'") == t ]]; then
        log "updating the timescaledb extension"
        psql_super -d "$DB_NAME" -c 'ALTER EXTENSION timescaledb UPDATE'
    fi
}

# Lock files of a killed server make a new one refuse to start while the old pid
# exists, and a killed process can stay a zombie for seconds here.
pg_clear_stale_locks() {
    local f pid
    for f in "$PGDATA/postmaster.pid" "/var/run/postgresql/.s.PGSQL.$PG_PORT.lock"; do
        [[ -f $f ]] || continue
        pid=$(head -n1 "$f" | tr -dc '0-9')
        if ! pid_alive "$pid"; then
            log "removing stale $f (pid ${pid:-?} is gone)"
            rm -f "$f"
        fi
    done
}

ensure_postgres() {
    pg_register_cluster
    local changed=1
    pg_configure && changed=0
    if pg_cluster_running "$MAJOR"; then
        if ((changed == 0)); then
            log "PostgreSQL settings changed: restarting cluster $MAJOR/$PG_CLUSTER"
            pg_ctl_cluster "$MAJOR" "$PG_CLUSTER" restart -m fast || { show_log "$PG_LOG"; die "PostgreSQL restart failed"; }
        fi
    else
        pg_clear_stale_locks
        log "starting PostgreSQL $MAJOR cluster $PG_CLUSTER"
        pg_ctl_cluster "$MAJOR" "$PG_CLUSTER" start || { show_log "$PG_LOG"; die "PostgreSQL did not start"; }
    fi
    wait_until "PostgreSQL on $HOST:$PG_PORT" "$PG_LOG" pg_isready -q -h "$HOST" -p "$PG_PORT"
    pg_bootstrap_db
    refuse_unreadable_compression /var/run/postgresql "$PG_PORT" "$DB_NAME"
    # keep a copy of the config with the data, to register this data dir again later
    rm -rf "$PGCONF_SNAPSHOT.tmp"
    cp -a "$ETC_DIR" "$PGCONF_SNAPSHOT.tmp"
    rm -rf "$PGCONF_SNAPSHOT"
    mv "$PGCONF_SNAPSHOT.tmp" "$PGCONF_SNAPSHOT"
}

# ---------------------------------------------------------------- pgBackRest

# Writes pgBackRest's config and creates the stanza in the repository. A repository
# that holds another database's backups (the data dir was made anew) is moved aside,
# never deleted.
ensure_backup_repo() {
    local repo dir out
    repo=$(backup_repo "$PGSTATE")
    dir=$(dirname "$PGBR_CONF")
    mkdir -p "$dir/log" "$repo"
    chown "$PG_OS_USER:$PG_OS_USER" "$dir" "$dir/log" "$repo"
    chmod 750 "$dir" "$repo"
    as_postgres test -w "$repo" -a -x "$repo" || die "the $PG_OS_USER user cannot write BACKUP_REPO $repo"
    ln -sfn "$dir/log" "$LOG_DIR/pgbackrest"
    write_file "$PGBR_CONF" 640 "# Written by stack/up.sh: edit stack/up.sh, not this file.
[global]
repo1-path=$repo
repo1-retention-full=$BACKUP_RETENTION_FULL
# make backup expires itself (stack/backup.sh: full-backup count and WAL days)
expire-auto=n
compress-type=lz4
start-fast=y
log-path=$dir/log
lock-path=$dir/lock
spool-path=$dir/spool
log-level-console=warn
log-level-file=info

[$STANZA]
pg1-path=$PGDATA
pg1-port=$PG_PORT
pg1-socket-path=/var/run/postgresql" || true
    if ! out=$(pgbackrest_run "$PGSTATE" stanza-create 2>&1); then
        if grep -q 'unable to acquire lock' <<<"$out"; then
            # A backup (or expire) of this stanza holds the lock: it exists and matches.
            log "pgBackRest stanza $STANZA is in use (a backup runs): kept as it is"
        elif grep -q 'do not match the database' <<<"$out"; then
            local aside
            aside="$repo.orphan-$(date +%Y%m%d-%H%M%S)"
            log "backup repository $repo holds another database's backups: moved to $aside"
            mv "$repo" "$aside"
            mkdir -p "$repo"
            chown "$PG_OS_USER:$PG_OS_USER" "$repo"
            chmod 750 "$repo"
            out=$(pgbackrest_run "$PGSTATE" stanza-create 2>&1) ||
                { printf '%s\n' "$out" | sed 's/^/  | /' >&2; die "pgbackrest stanza-create failed"; }
        else
            printf '%s\n' "$out" | sed 's/^/  | /' >&2
            die "pgbackrest stanza-create failed"
        fi
    fi
}

# ---------------------------------------------------------------- read replica

REPLICA_DIR="$PGSTATE/replica"
REPLICA_DATA="$REPLICA_DIR/pgdata"

# REPLICA=1: a streaming replica of the cluster on $REPLICA_PORT, made with pg_basebackup -R
# (hot standby), run with pg_ctl from $REPLICA_DIR. It fetches WAL it missed while down
# from the archive (restore_command), so no replication slot holds WAL on the primary.
# A replica of an older data dir (another system identifier) is made anew.
ensure_replica() {
    local bin pid
    bin=$(pg_bindir "$MAJOR")
    psql_super -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REPLICATION_USER') THEN
    CREATE ROLE $REPLICATION_USER REPLICATION LOGIN;
  END IF;
END \$\$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE $REPLICATION_USER PASSWORD '$REPLICATION_PASSWORD';
SQL
    pid=$(head -n1 "$REPLICA_DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true)
    pid_alive "$pid" && return 0
    if [[ -f $REPLICA_DATA/PG_VERSION ]]; then
        local ours theirs
        ours=$(as_postgres "$bin/pg_controldata" "$PGDATA" | sed -n 's/^Database system identifier: *//p')
        theirs=$(as_postgres "$bin/pg_controldata" "$REPLICA_DATA" | sed -n 's/^Database system identifier: *//p')
        if [[ $ours != "$theirs" ]]; then
            log "the replica in $REPLICA_DIR follows another database: making it anew"
            rm -rf "$REPLICA_DIR"
        fi
    fi
    local holder
    holder=$(listener_pid "$REPLICA_PORT")
    [[ -z $holder ]] || die "port $REPLICA_PORT is held by '$(pid_comm "$holder")' (pid $holder), not by the replica"
    if [[ ! -f $REPLICA_DATA/PG_VERSION ]]; then
        mkdir -p "$REPLICA_DIR/socket"
        chown -R "$PG_OS_USER:$PG_OS_USER" "$REPLICA_DIR"
        chmod 700 "$REPLICA_DIR"
        log "making the read replica with pg_basebackup -R (from $HOST:$PG_PORT)"
        PGPASSWORD=$REPLICATION_PASSWORD as_postgres "$bin/pg_basebackup" -h "$HOST" -p "$PG_PORT" \
            -U "$REPLICATION_USER" -w -D "$REPLICA_DATA" -R -X stream -c fast \
            >"$LOG_DIR/pg_basebackup.log" 2>&1 ||
            { show_log "$LOG_DIR/pg_basebackup.log"; rm -rf "$REPLICA_DIR"; die "pg_basebackup failed"; }
    fi
    write_cluster_conf "$MAJOR" "$REPLICA_DATA" "$REPLICA_PORT" "$REPLICA_DIR/socket" "hot_standby = on
hot_standby_feedback = on
ssl = on
ssl_cert_file = '$SERVER_TLS/server.crt'
ssl_key_file = '$SERVER_TLS/server.key'
ssl_min_protocol_version = 'TLSv1.2'
restore_command = 'pgbackrest --config=$PGBR_CONF --stanza=$STANZA --pg1-path=$REPLICA_DATA archive-get %f \"%p\"'"
    ln -sfn "$REPLICA_DIR/postgresql.log" "$LOG_DIR/replica.log"
    REPLICA_LOG_FROM=$(stat -c %s "$REPLICA_DIR/postgresql.log" 2>/dev/null || echo 0)
    log "starting the read replica on $HOST:$REPLICA_PORT"
    as_postgres "$bin/pg_ctl" -D "$REPLICA_DATA" -l "$REPLICA_DIR/postgresql.log" -w \
        -t "$READY_TIMEOUT" start >/dev/null ||
        { show_log "$REPLICA_DIR/postgresql.log"; die "the read replica did not start"; }
}

replica_streaming() {
    [[ $(as_postgres psql -X -qtA -h "$REPLICA_DIR/socket" -p "$REPLICA_PORT" -d postgres \
        -c "SELECT pg_is_in_recovery() AND status = 'streaming' FROM pg_stat_wal_receiver") == t ]]
}

# A replica stopped long enough ago needs WAL that the primary has recycled and backup
# retention has expired from the archive: it can never catch up.
replica_wal_gone() {
    tail -c +"$((REPLICA_LOG_FROM + 1))" "$REPLICA_DIR/postgresql.log" 2>/dev/null |
        grep -q 'requested WAL segment .* has already been removed'
}

replica_streaming_or_stuck() { replica_streaming || replica_wal_gone; }

wait_replica() {
    wait_until "the read replica streaming" "$LOG_DIR/replica.log" replica_streaming_or_stuck
    replica_streaming && return 0
    log "the replica needs WAL that neither the primary nor the archive still has: making it anew"
    as_postgres "$(pg_bindir "$MAJOR")/pg_ctl" -D "$REPLICA_DATA" stop -m fast >/dev/null
    rm -rf "$REPLICA_DIR"
    ensure_replica
    wait_until "the read replica streaming" "$LOG_DIR/replica.log" replica_streaming
}

# ---------------------------------------------------------------- pgBouncer

PGB_DIR="$PGSTATE/pgbouncer"
PGB_INI="$PGB_DIR/pgbouncer.ini"
PGB_PIDFILE="$PGB_DIR/pgbouncer.pid"
PGB_LOG="$PGB_DIR/pgbouncer.log"

ensure_pgbouncer() {
    local version changed=1 extra="" pid
    version=$(pgbouncer_version)
    [[ -n $version ]] || die "$PGBOUNCER_BIN is missing: run 'make setup'"
    # 1.21+ tracks prepared statements in transaction mode (asyncpg's statement cache)
    version_ge "$version" 1.21 && extra="max_prepared_statements = 200"
    mkdir -p "$PGB_DIR"
    chown "$PG_OS_USER:$PG_OS_USER" "$PGB_DIR"
    chmod 750 "$PGB_DIR"
    write_file "$PGB_DIR/userlist.txt" 600 "\"$DB_USER\" \"$DB_PASSWORD\"
\"$DB_OWNER\" \"$DB_OWNER_PASSWORD\"
\"$READ_USER\" \"$READ_PASSWORD\"" && changed=0
    write_file "$PGB_INI" 640 "; Written by stack/up.sh (pgBouncer $version).
[databases]
$DB_NAME = host=$HOST port=$PG_PORT dbname=$DB_NAME

[pgbouncer]
listen_addr = $HOST
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
admin_users = $DB_USER
stats_users = $DB_USER
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 50
reserve_pool_size = 10
reserve_pool_timeout = 3
server_reset_query =
ignore_startup_parameters = extra_float_digits
; TLS from clients when they ask for it, and always to PostgreSQL, verified (stack/tls.sh)
client_tls_sslmode = prefer
client_tls_key_file = $SERVER_TLS/server.key
client_tls_cert_file = $SERVER_TLS/server.crt
client_tls_ca_file = $SERVER_TLS/ca.crt
server_tls_sslmode = verify-full
server_tls_ca_file = $SERVER_TLS/ca.crt
; server certificate sha256 $(tls_fingerprint "$SERVER_TLS")
logfile = $PGB_LOG
pidfile = $PGB_PIDFILE
$extra" && changed=0
    ln -sfn "$PGB_LOG" "$LOG_DIR/pgbouncer.log"

    pid=$(read_pidfile "$PGB_PIDFILE")
    if ((changed == 1)) && pid_alive "$pid" && [[ $(pid_comm "$pid") == pgbouncer* ]] &&
        [[ $(listener_pid "$PGB_PORT") == "$pid" ]]; then
        return 0
    fi
    stop_service pgbouncer "$PGB_PIDFILE" "$PGB_PORT" pgbouncer "$(pgbouncer_stop_signal)"
    log "starting pgBouncer $version"
    # pgBouncer refuses to run as root. It needs one fd per client and server
    # connection (max_client_conn plus its server connections: over 1024), and runuser's
    # PAM session resets the soft limit to 1024.
    local nofile=8192 hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < nofile)); then ulimit -Hn "$nofile" 2>/dev/null || nofile=$hard; fi
    [[ ! -e $PGB_LOG ]] || chown "$PG_OS_USER:$PG_OS_USER" "$PGB_LOG"
    as_postgres prlimit --nofile="$nofile:$nofile" "$PGBOUNCER_BIN" -d "$PGB_INI" >"$LOG_DIR/pgbouncer-start.log" 2>&1 ||
        { show_log "$LOG_DIR/pgbouncer-start.log"; show_log "$PGB_LOG"; die "pgBouncer did not start"; }
}

pgbouncer_query() {
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=3 psql -X -q -h "$HOST" -p "$PGB_PORT" -U "$DB_USER" \
        -d "$DB_NAME" -tAc 'SELECT 1' | grep -qx 1
}

# ---------------------------------------------------------------- Tansu

ensure_tansu() {
    local pid bin
    pid=$(read_pidfile "$TANSU_PIDFILE")
    if pid_alive "$pid" && [[ $(pid_comm "$pid") == tansu* ]] && [[ $(listener_pid "$KAFKA_PORT") == "$pid" ]]; then
        return 0
    fi
    # a Tansu still on the port (stale or another clone's) makes a new one panic
    stop_service tansu "$TANSU_PIDFILE" "$KAFKA_PORT" tansu TERM
    bin=$(tansu_bin)
    log "starting Tansu ($("$bin" --version))"
    printf '\n==== %s start\n' "$(date -Is)" >>"$TANSU_LOG"
    (
        cd "$STACK_DIR"
        exec 9>&-
        exec setsid nohup "$bin" broker \
            --listener-url "tcp://$HOST:$KAFKA_PORT" \
            --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" \
            --storage-engine memory://tansu/ >>"$TANSU_LOG" 2>&1 </dev/null
    ) &
    echo $! >"$TANSU_PIDFILE"
}

tansu_listening() {
    local pid
    pid=$(read_pidfile "$TANSU_PIDFILE")
    pid_alive "$pid" || { echo "Tansu (pid ${pid:-?}) exited"; return 99; }
    [[ $(listener_pid "$KAFKA_PORT") == "$pid" ]]
}

# A real Kafka metadata request (a TCP connect is not enough).
kafka_metadata() {
    "$VENV_PY" - "$HOST:$KAFKA_PORT" <<'EOF'
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

async def main(bootstrap):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 8))
EOF
}

# ---------------------------------------------------------------- main

reserve_listen_ports
ensure_tansu            # first: it starts in milliseconds, no need to wait for it
ensure_tls "$SERVER_TLS"
ensure_postgres
ensure_backup_repo
if [[ ${REPLICA:-0} == 1 ]]; then
    ensure_replica
fi
ensure_pgbouncer
wait_until "pgBouncer on $HOST:$PGB_PORT" "$PGB_LOG" pgbouncer_query
wait_until "Tansu on $HOST:$KAFKA_PORT" "$TANSU_LOG" tansu_listening
wait_until "Kafka metadata from $HOST:$KAFKA_PORT" "$TANSU_LOG" kafka_metadata
if [[ ${REPLICA:-0} == 1 ]]; then
    wait_replica
fi

TSDB=$(psql_super -d "$DB_NAME" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
log "stack up in $((SECONDS - T0)) s"
printf 'postgres   %s:%s  PostgreSQL %s + TimescaleDB %s (%s license), cluster %s/%s, data %s\n' \
    "$HOST" "$PG_PORT" "$MAJOR" "$TSDB" "$(psql_super -d postgres -tAc 'SHOW timescaledb.license')" \
    "$MAJOR" "$PG_CLUSTER" "$PGDATA"
printf 'pgbouncer  %s:%s   pgBouncer %s, pool_mode=transaction, database %s, user %s\n' \
    "$HOST" "$PGB_PORT" "$(pgbouncer_version)" "$DB_NAME" "$DB_USER"
if [[ ${REPLICA:-0} == 1 ]]; then
    printf 'replica    %s:%s  streaming replica (hot standby) of %s, data %s\n' \
        "$HOST" "$REPLICA_PORT" "$PG_PORT" "$REPLICA_DATA"
fi
printf 'backups    %s   pgBackRest stanza %s, WAL archived continuously\n' \
    "$(backup_repo "$PGSTATE")" "$STANZA"
printf 'kafka      %s:%s   Tansu broker, memory storage (topics are lost when it stops)\n' \
    "$HOST" "$KAFKA_PORT"

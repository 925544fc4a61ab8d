#!/bin/sh
# The production backup service's loop (docker-compose.yml, service `backup`): creates the
# stanza, then every BACKUP_CHECK_SECONDS takes a full backup when the newest one is older
# than BACKUP_FULL_HOURS, and expires what retention no longer needs: BACKUP_RETENTION_FULL
# full backups, and enough of them that point-in-time recovery reaches WAL_ARCHIVE_DAYS
# back (pgbackrest_info.py keep), then records the backup in storage.backups, whose newest
# row the workers report as devicestream_db_last_backup_timestamp_seconds. WAL itself is archived continuously by PostgreSQL's
# archive_command. Logs go to stdout (docker compose logs backup).
set -eu
INFO=/usr/local/lib/devicestream/pgbackrest_info.py
: "${BACKUP_FULL_HOURS:=24}" "${BACKUP_CHECK_SECONDS:=600}"
: "${BACKUP_RETENTION_FULL:=7}" "${WAL_ARCHIVE_DAYS:=14}"

until pg_isready -q -h /var/run/postgresql -U devicestream -d devicestream; do sleep 5; done
pgbackrest --stanza=devicestream stanza-create

while :; do
    due=$(pgbackrest --stanza=devicestream info --output=json | python3 "$INFO" full-due "$BACKUP_FULL_HOURS")
    if [ "$due" = due ]; then
        pgbackrest --stanza=devicestream backup --type=full
        keep=$(pgbackrest --stanza=devicestream info --output=json |
            python3 "$INFO" keep "$BACKUP_RETENTION_FULL" "$WAL_ARCHIVE_DAYS")
        pgbackrest --stanza=devicestream expire --repo1-retention-full="$keep"
        pgbackrest --stanza=devicestream info --output=json | python3 "$INFO" last
        pgbackrest --stanza=devicestream info --output=json | python3 "$INFO" record |
            psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -U postgres -d devicestream
    fi
    sleep "$BACKUP_CHECK_SECONDS"
done

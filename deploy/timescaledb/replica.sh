#!/bin/sh
# Entrypoint of the read replica (docker-compose.yml: timescaledb-replica), run as postgres.
# First start: a base backup of the primary with `pg_basebackup -R` (WAL streamed along,
# standby.signal and primary_conninfo written), made beside PGDATA and moved into place
# only once complete, so an interrupted copy is made again. Then PostgreSQL with the
# primary's settings as a hot standby; WAL it missed while down comes from the pgBackRest
# archive. Promoted to a primary, it keeps running from the same data: mount the archive
# read-write and give it the primary's archive settings before it takes writes.
set -eu
: "${PGDATA:?}" "${PRIMARY_HOST:?}" "${REPLICATION_USER:?}" "${REPLICATION_PASSWORD:?}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA.new"
    echo "replica: base backup of $PRIMARY_HOST into $PGDATA"
    # over TLS, verified; -R keeps sslmode and sslrootcert in primary_conninfo
    PGPASSWORD=$REPLICATION_PASSWORD pg_basebackup \
        -d "host=$PRIMARY_HOST port=5432 user=$REPLICATION_USER sslmode=verify-full sslrootcert=/etc/devicestream/tls/ca.crt" \
        -w -D "$PGDATA.new" -R -X stream -c fast
    mv "$PGDATA.new" "$PGDATA"
fi

exec postgres -D "$PGDATA" -c config_file=/etc/postgresql/postgresql.conf \
    -c hot_standby=on -c hot_standby_feedback=on \
    -c "restore_command=pgbackrest --stanza=devicestream --pg1-path=$PGDATA archive-get %f \"%p\""

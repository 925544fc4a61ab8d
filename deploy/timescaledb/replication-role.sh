#!/bin/sh
# The role the read replica streams with (docker-compose.yml: timescaledb-replica).
# Run by the image's entrypoint on the first start of an empty data directory (mounted into
# /docker-entrypoint-initdb.d). Safe to run again, e.g. on a database made before the
# replica existed, or to set a new REPLICATION_PASSWORD:
#   docker compose exec timescaledb sh /docker-entrypoint-initdb.d/010-replication-role.sh
# pg_hba.conf admits it for replication from the compose network only.
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-devicestream}" --dbname postgres \
    -v password="${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD}" <<'SQL'
SELECT 'CREATE ROLE replicator REPLICATION LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
SET password_encryption = 'scram-sha-256';
ALTER ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL

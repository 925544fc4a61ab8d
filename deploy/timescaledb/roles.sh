#!/bin/sh
# The three roles of least privilege (docs/security.md#roles), run by the image's entrypoint
# as the superuser on the first start of an empty data directory (mounted into
# /docker-entrypoint-initdb.d, after the image's own script created the database and the
# timescaledb extension). Safe to run again, e.g. on a database made before the roles
# existed (it then hands the database and its objects from devicestream to the owner), or
# to set new passwords:
#   docker compose exec timescaledb sh /docker-entrypoint-initdb.d/020-roles.sh
#
#   devicestream_owner   owns the database and schema; `migrate` runs as it
#   devicestream         the workers: rows only, maintenance through SECURITY DEFINER
#                        functions; pg_monitor for /pipeline/db
#   devicestream_reader  the query API's read pools and Grafana: SELECT only
# Their privileges on the tables are granted by `migrate` (schema/roles.py).
set -eu
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v owner_password="${DB_OWNER_PASSWORD:?set DB_OWNER_PASSWORD}" \
    -v workers_password="${DB_PASSWORD:?set DB_PASSWORD}" \
    -v reader_password="${READ_DB_PASSWORD:?set READ_DB_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', name)
  FROM (VALUES ('devicestream_owner'), ('devicestream'), ('devicestream_reader')) AS r(name)
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \gexec
SET password_encryption = 'scram-sha-256';
ALTER ROLE devicestream_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
ALTER ROLE devicestream LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'workers_password';
ALTER ROLE devicestream_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'reader_password';
GRANT pg_monitor TO devicestream;
ALTER DATABASE devicestream OWNER TO devicestream_owner;
SQL
# objects the single-role layout left to devicestream (REASSIGN works per database), and
# pg_stat_statements, which is no trusted extension: the owner role cannot create it
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname devicestream <<'SQL'
REASSIGN OWNED BY devicestream TO devicestream_owner;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL

#!/bin/sh
# pgBouncer's entrypoint in docker-compose.yml: writes the user list from the environment
# (the workers' role and the read-only one; a double quote in a password is doubled, as
# the file's format wants), then runs pgBouncer. No password is stored in the repository.
set -eu
umask 077
entry() { printf '"%s" "%s"\n' "$1" "$(printf '%s' "$2" | sed 's/"/""/g')"; }
{
    entry "${DB_USER:?}" "${DB_PASSWORD:?}"
    entry "${READ_DB_USER:?}" "${READ_DB_PASSWORD:?}"
} > /etc/pgbouncer/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini

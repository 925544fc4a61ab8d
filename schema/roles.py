"""Least privilege: what the workers' role and the read-only role may do, granted by ``migrate``.

Three roles (docs/security.md#roles):

- the **owner** runs the migrations (``DB_OWNER_USER``) and owns every table, view and
  function of the schema;
- the **workers' role** (``DB_USER``, the CONTRACT's ``devicestream``) reads everything and
  writes what ingest and maintenance write: rows, never DDL. It owns nothing, so DROP,
  TRUNCATE and ALTER of the storage tables are refused to it; maintenance's DDL goes
  through the owner's SECURITY DEFINER functions (migration 0008);
- the **read-only role** (``READ_DB_USER``) of the query API's read pools reads what the
  query routes read.

``grant_privileges`` runs after the migrations on every ``migrate``, so tables that later
migrations add get their grants too. The roles themselves (logins, passwords,
``pg_monitor``) are the server's business: ``stack/up.sh`` locally, the database image's
init script in compose.
"""
from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)

# Tables the workers' role writes, and how. Everything else of the schema it only reads.
WORKER_WRITES: dict[str, str] = {
    "public.devices": "INSERT, UPDATE",
    "public.dead_letters": "INSERT, UPDATE",
    "storage.series": "INSERT",
    "storage.readings": "INSERT, DELETE",  # DELETE: per-device retention
    "storage.readings_1m": "INSERT, UPDATE",
    "storage.readings_1h": "INSERT, UPDATE",
    "storage.maintenance_lease": "INSERT, UPDATE, DELETE",
    "storage.maintenance_runs": "INSERT, DELETE",
    "storage.chunk_maintenance": "INSERT, UPDATE, DELETE",
}
# What the query routes read.
READER_READS = ("public.devices", "public.readings", "public.readings_1m", "public.readings_1h",
                "storage.series", "storage.readings", "storage.readings_1m",
                "storage.readings_1h")
MAINTENANCE_FUNCTIONS = (
    "storage.drop_chunks(regclass, timestamptz, timestamptz)",
    "storage.replace_retention_policy(regclass, interval)",
    "storage.replace_compression_policy(regclass, interval)",
    "storage.trim_chunk(regclass, integer[])",
    "storage.compact_index(regclass)",
    "storage.cluster_chunk(regclass, regclass)",
    "storage.analyze(regclass)",
)
_HYPERTABLES = ("storage.readings", "storage.readings_1m", "storage.readings_1h")


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier (PostgreSQL's quote_ident, always quoted)."""
    return '"' + name.replace('"', '""') + '"'


async def grant_privileges(conn: asyncpg.Connection, workers: str,
                           reader: str | None) -> list[str]:
    """Grant the workers' and the read-only role their privileges; return what was done.

    A role that does not exist, or that is the owner itself (a single-role deployment:
    nothing to grant), is skipped with a warning naming it.
    """
    owner = await conn.fetchval("SELECT current_user")
    database = await conn.fetchval("SELECT current_database()")
    done: list[str] = []
    for role, grants in ((workers, _worker_grants), (reader, _reader_grants)):
        if not role:
            continue
        if role == owner:
            log.warning("role %s runs the migrations and owns the tables: it is not held to "
                        "least privilege (docs/security.md#roles)", role)
            continue
        if not await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role):
            log.warning("role %s does not exist: no privileges granted to it", role)
            continue
        async with conn.transaction():
            for statement in grants(quote_ident(role), quote_ident(database)):
                await conn.execute(statement)
        done.append(role)
    return done


def _worker_grants(role: str, database: str) -> list[str]:
    return [
        f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public, storage TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public, storage TO {role}",
        # by name as well: TimescaleDB passes a hypertable's grants on to its chunks
        *(f"GRANT SELECT ON {table} TO {role}" for table in _HYPERTABLES),
        *(f"GRANT {how} ON {table} TO {role}" for table, how in WORKER_WRITES.items()),
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public, storage TO {role}",
        *(f"GRANT EXECUTE ON FUNCTION {function} TO {role}"
          for function in MAINTENANCE_FUNCTIONS),
    ]


def _reader_grants(role: str, database: str) -> list[str]:
    return [
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public, storage TO {role}",
        *(f"GRANT SELECT ON {table} TO {role}" for table in READER_READS),
    ]

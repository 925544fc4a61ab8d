"""Apply the SQL migrations in ``schema/migrations`` that the database has not seen yet.

Each file runs once, in its own transaction, in file-name order; ``schema_migrations``
records what ran. An advisory lock serialises concurrent runs (several workers starting at
once), so ``migrate`` is safe to run any number of times from anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import asyncpg

_LOCK_KEY = 0x6465766963650001  # "device" + 1: the migration lock of this schema

_BOOKKEEPING = """
CREATE TABLE schema_migrations (
    version    text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, oldest first."""
    folder = resources.files("schema") / "migrations"
    return [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    ]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the versions applied by this call."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        # Only created when missing: a role without CREATE on the schema may still check.
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
            await conn.execute(_BOOKKEEPING)
    for migration in available_migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            done = await conn.fetchval(
                "SELECT true FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
            )
            applied_now.append(migration.version)
    return applied_now

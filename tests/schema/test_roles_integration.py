"""Least privilege on the real stack (docs/security.md#roles): the workers' role owns nothing
and is refused DDL on the storage tables, the read-only role only reads, and the maintenance
functions the workers call act on the storage hypertables only. That ingest, maintenance
and the query API work under these roles is what the rest of the suite shows: its
workers, maintenance runs and read pools use them."""
from __future__ import annotations

from dataclasses import replace
from typing import AsyncIterator

import asyncpg
import pytest

from schema.roles import MAINTENANCE_FUNCTIONS, grant_privileges
from tests.stack import SETTINGS, db_connect

pytestmark = pytest.mark.integration

STORAGE_TABLES = ("storage.readings", "storage.readings_1m", "storage.readings_1h",
                  "storage.series", "public.devices", "public.dead_letters")
READER = replace(SETTINGS, db=replace(SETTINGS.db, user=SETTINGS.read_db.user,
                                      password=SETTINGS.read_db.password))


@pytest.fixture
async def workers(stack: None) -> AsyncIterator[asyncpg.Connection]:
    conn = await db_connect()
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def reader(stack: None) -> AsyncIterator[asyncpg.Connection]:
    conn = await db_connect(READER)
    try:
        yield conn
    finally:
        await conn.close()


async def _refused(conn: asyncpg.Connection, sql: str) -> str:
    """The error of ``sql``, which must be a refusal of privilege (rolled back either way)."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
        async with conn.transaction():
            await conn.execute(sql)
    return str(refused.value)


async def test_the_workers_role_is_no_superuser_and_owns_nothing(workers) -> None:
    assert await workers.fetchval("SELECT current_user") == SETTINGS.db.user
    assert not await workers.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    owned = await workers.fetch(
        "SELECT c.oid::regclass::text AS name FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE pg_get_userbyid(c.relowner) = current_user "
        "AND n.nspname IN ('public', 'storage', '_timescaledb_internal')")
    assert [r["name"] for r in owned] == []
    assert await workers.fetchval(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
    ) == SETTINGS.db.owner_user


@pytest.mark.parametrize("table", STORAGE_TABLES)
async def test_the_workers_role_may_not_drop_truncate_or_alter_a_storage_table(workers,
                                                                             table) -> None:
    assert "must be owner" in await _refused(workers, f"DROP TABLE {table}")
    assert "permission denied" in await _refused(workers, f"TRUNCATE {table}")
    assert "must be owner" in await _refused(workers, f"ALTER TABLE {table} ADD COLUMN x int")
    assert await workers.fetchval(f"SELECT to_regclass('{table}') IS NOT NULL")


async def test_the_workers_role_creates_no_table_and_only_writes_what_ingest_writes(
        workers) -> None:
    for schema in ("public", "storage"):
        await _refused(workers, f"CREATE TABLE {schema}.intruder (a int)")
    await _refused(workers, "UPDATE storage.readings SET value = 0 WHERE false")  # values stay
    await _refused(workers, "DELETE FROM devices WHERE false")
    await _refused(workers, "DELETE FROM storage.series WHERE false")
    async with workers.transaction():  # what ingest and maintenance write: allowed
        await workers.execute("DELETE FROM storage.readings WHERE false")
        await workers.execute("UPDATE storage.readings_1m SET count = count WHERE false")
        await workers.execute("UPDATE devices SET retention_days = NULL WHERE false")


@pytest.mark.parametrize("call", [
    "SELECT storage.analyze('pg_class'::regclass)",
    "SELECT storage.trim_chunk('public.devices'::regclass, '{}')",
    "SELECT storage.drop_chunks('public.dead_letters'::regclass, now())",
    "SELECT storage.compact_index('pg_class_oid_index'::regclass)",
    "SELECT storage.replace_retention_policy('storage.series'::regclass, NULL)",
])
async def test_maintenance_functions_act_on_the_storage_hypertables_only(workers, call) -> None:
    assert "is not a storage hypertable" in await _refused(workers, call)


async def test_the_read_only_role_reads_and_does_nothing_else(reader) -> None:
    assert await reader.fetchval("SELECT count(*) >= 0 FROM readings")
    assert await reader.fetchval("SELECT count(*) >= 0 FROM storage.series")
    await _refused(reader, "INSERT INTO devices (device_id, first_seen, last_seen) "
                           "VALUES ('intruder', now(), now())")
    await _refused(reader, "DELETE FROM storage.readings WHERE false")
    await _refused(reader, "SELECT * FROM dead_letters")
    for function in MAINTENANCE_FUNCTIONS:
        assert not await reader.fetchval("SELECT has_function_privilege($1, 'EXECUTE')",
                                         function), function
    await _refused(reader, "SELECT storage.analyze('storage.readings'::regclass)")


async def test_only_the_workers_role_may_call_the_maintenance_functions(workers) -> None:
    for function in MAINTENANCE_FUNCTIONS:
        assert await workers.fetchval("SELECT has_function_privilege($1, 'EXECUTE')", function)
        assert not await workers.fetchval(
            "SELECT has_function_privilege('public', $1, 'EXECUTE')", function), function


async def test_granting_skips_a_missing_role_and_the_owner_itself(stack: None) -> None:
    conn = await db_connect(SETTINGS.as_owner())
    try:
        granted = await grant_privileges(conn, "no_such_role_here", SETTINGS.db.owner_user)
        assert granted == []
        assert await grant_privileges(conn, SETTINGS.db.user, SETTINGS.read_db.user) == [
            SETTINGS.db.user, SETTINGS.read_db.user]
    finally:
        await conn.close()

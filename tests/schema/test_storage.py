"""The storage layout (migration 0004): the CONTRACT's tables are views with exactly the
contract's columns over dictionary-encoded hypertables, a raw row stays narrow, and the
migration carries the rows of the old layout over unchanged."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from importlib import resources

import pytest

from tests.stack import SETTINGS, db_connect, unique

pytestmark = pytest.mark.integration

CONTRACT = {
    "readings": [("time", "timestamp with time zone"), ("device_id", "text"),
                 ("metric", "text"), ("value", "double precision")],
    "readings_1m": [("bucket", "timestamp with time zone"), ("device_id", "text"),
                    ("metric", "text"), ("count", "bigint"), ("sum", "double precision"),
                    ("min", "double precision"), ("max", "double precision")],
}
CONTRACT["readings_1h"] = CONTRACT["readings_1m"]


async def test_contract_tables_keep_their_columns_and_types(stack) -> None:
    conn = await db_connect()
    try:
        for table, columns in CONTRACT.items():
            rows = await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                table)
            assert [(r["column_name"], r["data_type"]) for r in rows] == columns, table
    finally:
        await conn.close()


async def test_raw_points_live_in_a_narrow_hypertable_of_one_day_chunks(stack) -> None:
    conn = await db_connect()
    try:
        interval = await conn.fetchval(
            "SELECT time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = 'storage' AND hypertable_name = 'readings'")
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'storage' "
            "AND tablename = 'readings'")
        # 24 bytes of tuple header + time, series_id (padded) and value: 48 bytes a row
        width = await conn.fetchval(
            "SELECT pg_column_size(ROW(now()::timestamptz, 1::integer, 1.5::float8))")
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'storage' AND table_name = 'readings' "
            "ORDER BY ordinal_position")
    finally:
        await conn.close()
    assert interval == timedelta(days=1)
    assert "UNIQUE INDEX" in index and "(series_id, \"time\")" in index
    assert [(c["column_name"], c["data_type"]) for c in columns] == [
        ("time", "timestamp with time zone"), ("series_id", "integer"),
        ("value", "double precision")]
    assert width == 48


class _RolledBack(Exception):
    pass


def _migration(version: str) -> str:
    return (resources.files("schema") / "migrations" / f"{version}.sql").read_text()


async def test_the_migration_carries_the_old_rows_over(stack) -> None:
    """0001 + 0003 in a schema of their own, some rows, then 0004 pointed at that schema
    (and at another one for its storage): the views answer exactly the old rows."""
    old, new = unique("carry_old_"), unique("carry_new_")
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    rows = [(t0 - timedelta(seconds=s), d, m, float(s * 10 + i))
            for i, (d, m) in enumerate([("a", "t"), ("a", "h"), ("b", "t")])
            for s in range(0, 400, 7)]
    conn = await db_connect(SETTINGS.as_owner())  # migrations run as the owner
    try:
        with pytest.raises(_RolledBack):
            async with conn.transaction():  # rolled back: nothing stays behind
                await conn.execute(f"CREATE SCHEMA {old}")
                await conn.execute(f"SET LOCAL search_path = {old}, public")
                await conn.execute(_migration("0001_readings"))
                await conn.execute(_migration("0003_aggregates"))
                await conn.executemany(
                    "INSERT INTO readings (time, device_id, metric, value) "
                    "VALUES ($1, $2, $3, $4)", rows)
                for table, width in (("readings_1m", "1 minute"), ("readings_1h", "1 hour")):
                    await conn.execute(
                        f"INSERT INTO {table} SELECT time_bucket('{width}', time), device_id, "
                        "metric, count(*), sum(value), min(value), max(value) FROM readings "
                        "GROUP BY 1, 2, 3")
                before = {t: await conn.fetch(f"SELECT * FROM {t} ORDER BY 2, 3, 1")
                          for t in CONTRACT}
                sql = re.sub(r"\bstorage\b", new, _migration("0004_series_storage"))
                await conn.execute(sql.replace("public.", f"{old}."))
                after = {t: await conn.fetch(f"SELECT * FROM {t} ORDER BY 2, 3, 1")
                         for t in CONTRACT}
                kinds = dict(await conn.fetch(
                    "SELECT table_name, table_type FROM information_schema.tables "
                    "WHERE table_schema = $1", old))
                raise _RolledBack
    finally:
        await conn.close()
    assert len(before["readings"]) == len(rows)
    for table in CONTRACT:
        assert [tuple(r) for r in after[table]] == [tuple(r) for r in before[table]], table
    assert kinds["readings"] == kinds["readings_1m"] == kinds["readings_1h"] == "VIEW"

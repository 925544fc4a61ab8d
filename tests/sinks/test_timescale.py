"""The sink against the real database: idempotent, first value wins, devices kept current."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from schema.migrate import migrate
from sinks.postgres import create_pool
from sinks.timescale import TimescaleSink
from tests.stack import SETTINGS, aggregate_mismatches, db_connect, unique

pytestmark = pytest.mark.integration

T0 = int(datetime.now(timezone.utc).timestamp()) * 1_000_000


async def test_migrate_is_safe_to_run_again(stack) -> None:
    conn = await db_connect()
    try:
        await migrate(conn)
        assert await migrate(conn) == []
        kind = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'readings'")
        assert kind == 1
    finally:
        await conn.close()


async def test_writing_the_same_batch_twice_stores_it_once_with_first_values(stack) -> None:
    device = unique("sink-")
    batch = [(T0, device, "t", 1.0), (T0 + 1, device, "t", 2.0), (T0, device, "h", 3.0)]
    pool = await create_pool(SETTINGS)
    try:
        sink = TimescaleSink(pool)
        first = await sink.write(batch)
        again = await sink.write(batch + [(T0, device, "t", 99.0)])
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT metric, value FROM readings WHERE device_id = $1 ORDER BY metric, time",
                device)
            seen = await conn.fetchrow(
                "SELECT first_seen, last_seen FROM devices WHERE device_id = $1", device)
    finally:
        await pool.close()
    assert (first.inserted, again.inserted) == (3, 0)
    assert [(r["metric"], r["value"]) for r in rows] == [("h", 3.0), ("t", 1.0), ("t", 2.0)]
    assert seen["first_seen"].timestamp() * 1e6 == T0
    assert seen["last_seen"].timestamp() * 1e6 == T0 + 1


async def test_a_key_repeated_within_one_batch_keeps_the_value_that_arrived_first(stack) -> None:
    device = unique("sink-")
    # Many repeats of few keys, in an order unlike the index's: a sort that was not stable
    # on arrival would let a later value win some of them.
    batch = [(T0 + (i % 7), device, f"m{i % 3}", float(i)) for i in range(400)]
    first: dict[tuple[int, str], float] = {}
    for t, _, metric, value in batch:
        first.setdefault((t, metric), value)
    pool = await create_pool(SETTINGS)
    try:
        result = await TimescaleSink(pool).write(batch)
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT time, metric, value FROM readings WHERE device_id = $1", device)
            minutes = await conn.fetchval(
                "SELECT sum(count) FROM readings_1m WHERE device_id = $1", device)
    finally:
        await pool.close()
    stored = {(int(r["time"].timestamp() * 1e6), r["metric"]): r["value"] for r in rows}
    assert result.inserted == len(first) == minutes
    assert stored == first


async def test_aggregates_count_only_new_points_and_equal_sql_over_raw_rows(stack) -> None:
    device = unique("agg-")
    minute = 60_000_000
    start = T0 - T0 % (3600 * 1_000_000)
    first = [(start + i * 7_000_000, device, "t", float(i)) for i in range(30)]
    repeat = first[5:12] + [(start + 5 * 7_000_000, device, "t", -50.0)]  # dupes + conflict
    late = [(start + 2 * minute + 1, device, "t", 1e6), (start + 3, device, "h", -1.5)]
    pool = await create_pool(SETTINGS)
    try:
        sink = TimescaleSink(pool)
        await sink.write(first)
        await sink.write(list(reversed(first[20:])) + repeat)
        await sink.write(late)
        async with pool.acquire() as conn, conn.transaction():
            minutes = await conn.fetchval(
                "SELECT sum(count) FROM readings_1m WHERE device_id = $1", device)
    finally:
        await pool.close()
    assert minutes == 32
    assert await aggregate_mismatches([device]) == []

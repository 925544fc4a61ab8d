"""The sink against the real database: idempotent, first value wins, devices kept current."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from schema.migrate import migrate
from sinks.postgres import create_pool
from sinks.timescale import TimescaleSink, first_of_each_key
from tests.stack import SETTINGS, db_connect, unique

pytestmark = pytest.mark.integration

T0 = int(datetime.now(timezone.utc).timestamp()) * 1_000_000


def test_first_of_each_key_keeps_the_first_value_in_arrival_order() -> None:
    points = [(1, "d", "m", 1.0), (2, "d", "m", 2.0), (1, "d", "m", 9.0), (1, "d", "n", 3.0)]
    assert first_of_each_key(points) == [(1, "d", "m", 1.0), (2, "d", "m", 2.0), (1, "d", "n", 3.0)]


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

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
    assert (first.checked, again.checked, again.fallbacks) == (0, 4, 0)
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


async def _stored(device: str) -> dict[tuple[int, str], float]:
    conn = await db_connect()
    try:
        rows = await conn.fetch(
            "SELECT time, metric, value FROM readings WHERE device_id = $1", device)
    finally:
        await conn.close()
    return {(int(r["time"].timestamp() * 1e6), r["metric"]): r["value"] for r in rows}


async def test_new_points_take_the_fast_path_and_late_or_repeated_ones_the_checked_path(
        stack) -> None:
    device = unique("paths-")
    first = [(T0 + i, device, "t", float(i)) for i in range(100)]
    newer = [(T0 + 100 + i, device, "t", float(i)) for i in range(50)]
    late = [(T0 - 5, device, "t", -1.0), (T0 + 10, device, "t", 99.0)]  # new, and a repeat
    pool = await create_pool(SETTINGS)
    try:
        sink = TimescaleSink(pool)
        results = [await sink.write(first), await sink.write(newer + late)]
    finally:
        await pool.close()
    assert [(r.inserted, r.checked, r.fallbacks) for r in results] == [(100, 0, 0), (51, 2, 0)]
    stored = await _stored(device)
    assert len(stored) == 151
    assert stored[T0 + 10, "t"] == 10.0 and stored[T0 - 5, "t"] == -1.0
    assert await aggregate_mismatches([device]) == []


async def test_a_racing_writer_s_rows_send_the_batch_to_the_checked_path_first_values_kept(
        stack) -> None:
    device = unique("race-")
    minute = 60_000_000
    pool = await create_pool(SETTINGS)
    try:
        zombie, owner = TimescaleSink(pool), TimescaleSink(pool)
        # The owner learns the device's mark, then the zombie stores past it unseen.
        await owner.write([(T0, device, "t", 0.0)])
        raced = await zombie.write([(T0 + i * minute // 10, device, "t", 1.0) for i in range(1, 21)])
        mine = [(T0 + i * minute // 10, device, "t", 2.0) for i in range(11, 41)]
        fell_back = await owner.write(mine)
        again = await owner.write([(T0 + i * minute // 10, device, "t", 3.0) for i in range(41, 51)])
    finally:
        await pool.close()
    assert (raced.inserted, raced.checked) == (20, 0)
    assert (fell_back.inserted, fell_back.checked, fell_back.fallbacks) == (20, 30, 1)
    # After falling back, the owner read the device's mark again: fast once more.
    assert (again.inserted, again.checked, again.fallbacks) == (10, 0, 0)
    stored = await _stored(device)
    assert sorted(stored.values()).count(1.0) == 20  # the zombie's rows, all kept
    assert [stored[T0 + i * minute // 10, "t"] for i in range(11, 21)] == [1.0] * 10
    assert len(stored) == 51
    assert await aggregate_mismatches([device]) == []


async def test_a_racing_writer_s_bucket_alone_sends_the_batch_to_the_checked_path(
        stack) -> None:
    """No point collides, but the zombie's point made a row in a minute and an hour past
    the owner's mark: the owner's COPY of that new bucket's row fails, and the batch falls
    back instead of storing a second row for one (series, bucket)."""
    device = unique("race-bucket-")
    hour = 3_600_000_000
    start = T0 - T0 % hour - 5 * hour
    pool = await create_pool(SETTINGS)
    try:
        zombie, owner = TimescaleSink(pool), TimescaleSink(pool)
        await owner.write([(start, device, "t", 0.0)])
        raced = await zombie.write([(start + 2 * hour + 1, device, "t", 1.0)])
        fell_back = await owner.write([(start + 2 * hour + 2, device, "t", 2.0),
                                       (start + 3 * hour, device, "t", 3.0)])
        again = await owner.write([(start + 4 * hour, device, "t", 4.0)])
    finally:
        await pool.close()
    assert (raced.inserted, raced.fallbacks) == (1, 0)
    assert (fell_back.inserted, fell_back.checked, fell_back.fallbacks) == (2, 2, 1)
    assert (again.inserted, again.checked, again.fallbacks) == (1, 0, 0)
    assert len(await _stored(device)) == 5
    assert await aggregate_mismatches([device]) == []
    conn = await db_connect()
    try:
        counts = await conn.fetch(
            "SELECT bucket, count FROM readings_1h WHERE device_id = $1 ORDER BY bucket", device)
    finally:
        await conn.close()
    assert [r["count"] for r in counts] == [1, 2, 1, 1]


async def test_a_restarted_sink_replaying_a_stored_batch_writes_nothing_and_never_falls_back(
        stack) -> None:
    device = unique("replay-")
    batch = [(T0 + i, device, m, float(i)) for i in range(200) for m in ("a", "b")]
    pool = await create_pool(SETTINGS)
    try:
        before = await TimescaleSink(pool).write(batch)
        replay = await TimescaleSink(pool).write(batch + [(T0 + 500, device, "a", 5.0)])
    finally:
        await pool.close()
    assert (before.inserted, before.checked) == (400, 0)
    assert (replay.inserted, replay.checked, replay.fallbacks) == (1, 400, 0)
    assert await aggregate_mismatches([device]) == []


async def test_a_sink_whose_cache_starts_over_keeps_writing_exactly(stack) -> None:
    devices = [unique("churn-") for _ in range(5)]
    pool = await create_pool(SETTINGS)
    try:
        sink = TimescaleSink(pool, cache_bytes=1)  # less than one batch's series take
        results = [await sink.write([(T0 + step * 10 + i, d, m, float(i))
                                     for d in devices for m in ("x", "y") for i in range(10)])
                   for step in range(3)]
        replay = await sink.write([(T0 + i, d, "x", 7.0) for d in devices for i in range(10)])
    finally:
        await pool.close()
    assert [r.inserted for r in results] == [100, 100, 100]
    assert replay.inserted == 0
    assert await aggregate_mismatches(devices) == []

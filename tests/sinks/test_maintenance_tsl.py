"""The Timescale-license branch of the storage maintenance: compression (segment by
series_id = (device_id, metric), order by time DESC) with a policy at COMPRESS_AFTER_DAYS,
retention policies at the horizons, and exact writes and per-device retention on
compressed chunks. This is the production path (docker-compose runs the
timescale/timescaledb image), which the local stack runs wherever stack/setup.sh built
the vendored source; with Debian's Apache build the tests skip, saying why.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from sinks.compression_state import read_compression_state
from sinks.maintenance import HYPERTABLES, maintain
from sinks.postgres import connect_kwargs, create_pool
from sinks.timescale import TimescaleSink
from tests.stack import (
    PG_PORT,
    SETTINGS,
    aggregate_mismatches,
    compress_chunks_holding,
    db_connect,
    fleet,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("maintenance_turn")]


async def test_compression_and_retention_policies_are_set_and_kept(timescale_license) -> None:
    report = await maintain(SETTINGS, unique("tsl-"), wait=120)
    assert report is not None and report.license == "timescale"
    conn = await db_connect()
    try:
        settings = {r["hypertable"]: (r["segmentby"], r["orderby"]) for r in await conn.fetch(
            "SELECT hypertable::text, segmentby, orderby "
            "FROM timescaledb_information.hypertable_compression_settings "
            "WHERE hypertable::text LIKE 'storage.%'")}
        jobs = {(r["table"], r["proc_name"]): r["config"] for r in await conn.fetch(
            "SELECT format('%I.%I', hypertable_schema, hypertable_name) AS table, proc_name, "
            "config FROM timescaledb_information.jobs "
            "WHERE proc_name IN ('policy_compression', 'policy_retention') "
            "AND hypertable_schema = 'storage'")}
        intervals = {key: await conn.fetchval(
            "SELECT ($1::jsonb ->> $2)::interval", config,
            "compress_after" if key[1] == "policy_compression" else "drop_after")
            for key, config in jobs.items()}
        state = (await read_compression_state(conn)).as_maintenance_report()
    finally:
        await conn.close()
    assert settings["storage.readings"] == ("series_id", '"time" DESC')  # a keyword: quoted
    assert settings["storage.readings_1m"] == ("series_id", "bucket DESC")
    assert settings["storage.readings_1h"] == ("series_id", "bucket DESC")
    for table in HYPERTABLES:
        assert intervals[(table, "policy_compression")] == timedelta(
            days=SETTINGS.storage.compress_after_days)
    assert intervals[("storage.readings", "policy_retention")] == timedelta(
        days=report.horizon_days)
    assert intervals[("storage.readings_1m", "policy_retention")] == timedelta(
        days=SETTINGS.storage.aggregate_1m_retention_days)
    assert intervals[("storage.readings_1h", "policy_retention")] == timedelta(
        days=SETTINGS.storage.aggregate_1h_retention_days)
    assert (state["available"], state["state"]) == (True, "enabled")

    again = await maintain(SETTINGS, unique("tsl-"), wait=120)
    assert again is not None and again.policies == []  # nothing to change the second time


async def test_compressed_chunks_keep_first_values_exact_aggregates_and_retention(
        timescale_license) -> None:
    await maintain(SETTINGS, unique("tsl-"), wait=120)  # compression enabled
    (default, short), _ = fleet("tsl-", 2)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    old, older = now - timedelta(days=10), now - timedelta(days=20)
    batch = [(int(t.timestamp() * 1e6) + i, d, "m", float(i))
             for d in (default, short) for t in (old, older) for i in range(50)]
    pool = await create_pool(SETTINGS)
    try:
        sink = TimescaleSink(pool)
        assert (await sink.write(batch)).inserted == 200
        assert await compress_chunks_holding(old) >= 1
        assert await compress_chunks_holding(older) >= 1
        conflicting = [(t, d, m, v + 1000) for t, d, m, v in batch[:10]]
        new = [(int(old.timestamp() * 1e6) + 999, default, "m", 5.0)]
        assert (await sink.write(batch + conflicting + new)).inserted == 1
    finally:
        await pool.close()
    conn = await db_connect()
    try:
        values = await conn.fetchval(
            "SELECT sum(value) FROM readings WHERE device_id = ANY($1)", [default, short])
        await conn.execute("UPDATE devices SET retention_days = 7 WHERE device_id = $1", short)
    finally:
        await conn.close()
    assert values == 4 * sum(range(50)) + 5.0  # first values stayed
    assert await aggregate_mismatches([default, short]) == []

    report = await maintain(SETTINGS, unique("tsl-"), wait=120)
    assert report is not None and report.deleted_rows.get("7 days", 0) >= 100
    conn = await db_connect(SETTINGS.as_owner())
    try:
        counts = dict(await conn.fetch(
            "SELECT device_id, count(*) FROM readings WHERE device_id = ANY($1) GROUP BY 1",
            [default, short]))
        await conn.execute("DELETE FROM devices WHERE device_id = ANY($1)", [default, short])
    finally:
        await conn.close()
    assert counts == {default: 101}


def _session_with_default_limit() -> dict[str, Any]:
    """Connection arguments of a session straight to PostgreSQL with TimescaleDB's default
    decompression limit, which migration 0011 lifts only for sessions that start after it."""
    kwargs = connect_kwargs(SETTINGS)
    kwargs["port"] = PG_PORT
    kwargs["command_timeout"] = None
    kwargs["server_settings"] = {
        **kwargs["server_settings"],
        "timescaledb.max_tuples_decompressed_per_dml_transaction": "100000"}
    return kwargs


async def test_replays_and_device_retention_decompress_past_timescaledbs_default_limit(
        timescale_license) -> None:
    """A per-device retention DELETE over a compressed chunk decompresses the device's
    120,000 rows, past timescaledb.max_tuples_decompressed_per_dml_transaction's default
    (100,000), which would abort it. A replay into the compressed chunk stores nothing new.
    Both run in sessions that keep the default, as a pgBouncer server session opened before
    migration 0011 does (seen in a fresh clone's `make test`: `make stack-up`'s readiness
    query opens one): the sink's and the maintenance's transactions lift the limit."""
    await maintain(SETTINGS, unique("tsl-"), wait=120)  # compression enabled
    (keeper, short), _ = fleet("tsl-big-", 2)
    day = datetime.now(timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
    start = int((day - timedelta(days=10)).timestamp() * 1e6)
    batch = [(start + i * 1000, d, m, float(i))
             for d in (keeper, short) for m in ("a", "b") for i in range(60_000)]
    pool = await asyncpg.create_pool(min_size=0, max_size=2, **_session_with_default_limit())
    try:
        sink = TimescaleSink(pool)
        assert (await sink.write(batch)).inserted == len(batch)
        assert await compress_chunks_holding(day - timedelta(days=10)) >= 1
        assert (await sink.write(batch)).inserted == 0  # the replay
    finally:
        await pool.close()
    conn = await db_connect()
    try:
        await conn.execute("UPDATE devices SET retention_days = 7 WHERE device_id = $1", short)
    finally:
        await conn.close()
    conn = await asyncpg.connect(**_session_with_default_limit())
    try:
        report = await maintain(SETTINGS, unique("tsl-"), wait=120, conn=conn)
    finally:
        await conn.close()
    assert report is not None and report.deleted_rows.get("7 days", 0) >= 120_000
    conn = await db_connect(SETTINGS.as_owner())
    try:
        counts = dict(await conn.fetch(
            "SELECT device_id, count(*) FROM readings WHERE device_id = ANY($1) GROUP BY 1",
            [keeper, short]))
        await conn.execute("DELETE FROM devices WHERE device_id = ANY($1)", [keeper, short])
    finally:
        await conn.close()
    assert counts == {keeper: 120_000}
    assert await aggregate_mismatches([keeper]) == []


async def test_index_compaction_skips_a_chunk_compressed_since_it_was_listed(
        timescale_license) -> None:
    await maintain(SETTINGS, unique("tsl-"), wait=120)  # compression enabled
    (device,), _ = fleet("tsl-compact-", 1)
    old = datetime.now(timezone.utc) - timedelta(days=15)
    pool = await create_pool(SETTINGS)
    try:
        points = [(int(old.timestamp() * 1e6) + i, device, "m", float(i)) for i in range(100)]
        assert (await TimescaleSink(pool).write(points)).inserted == 100
    finally:
        await pool.close()
    assert await compress_chunks_holding(old) >= 1
    conn = await db_connect()  # the workers' role, as maintenance runs
    try:
        index = await conn.fetchval(
            "SELECT i.indexrelid::regclass::text FROM timescaledb_information.chunks c "
            "JOIN pg_index i ON i.indrelid = format('%I.%I', c.chunk_schema, c.chunk_name)"
            "::regclass WHERE c.hypertable_schema = 'storage' AND c.hypertable_name = "
            "'readings' AND c.range_start <= $1 AND c.range_end > $1 AND i.indisunique", old)
        rebuilt = await conn.fetchval("SELECT storage.compact_index($1::regclass)", index)
        still = await conn.fetchval(
            "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks WHERE "
            "hypertable_schema = 'storage' AND hypertable_name = 'readings' "
            "AND range_start <= $1 AND range_end > $1", old)
        count = await conn.fetchval(
            "SELECT count(*) FROM readings WHERE device_id = $1", device)
    finally:
        await conn.close()
    assert (rebuilt, still, count) == (False, True, 100)

"""Storage maintenance on the real database: per-device retention shorter and longer than
RETENTION_DAYS, the global horizon, index compaction, ANALYZE, the lease, the command and
the leader's timer.

The database is shared with other tests, so every check is about devices of the test's
own, whose readings are written straight through the sink with old timestamps.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from sinks.compression_state import read_compression_state
from sinks.maintenance import (
    LeaseTaken,
    RetentionPlan,
    acquire_lease,
    maintain,
    maintenance_connection,
    release_lease,
)
from sinks.postgres import create_pool
from sinks.timescale import TimescaleSink
from tests.stack import (
    REPO,
    SETTINGS,
    db_connect,
    fleet,
    forget_devices,
    hold_retention_jobs,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("maintenance_turn")]

AGES = {"1h": timedelta(hours=1), "3d": timedelta(days=3), "10d": timedelta(days=10),
        "95d": timedelta(days=95), "150d": timedelta(days=150), "250d": timedelta(days=250)}


def test_plan_horizon_is_the_longest_retention_in_force() -> None:
    assert RetentionPlan(90, ()).horizon_days == 90
    assert not RetentionPlan(90, (7, 30)).trims
    assert RetentionPlan(90, (7, 30)).delete_days == [7, 30]
    plan = RetentionPlan(90, (7, 90, 120, 400))
    assert (plan.horizon_days, plan.trims) == (400, True)
    # the longest needs no row deletes (its rows go with whole chunks); 90 is exact per row
    assert plan.delete_days == [7, 90, 120]


async def _write(devices: dict[str, int | None], now: datetime) -> None:
    await hold_retention_jobs()
    points = [(int((now - age).timestamp() * 1_000_000), device, "m", float(i))
              for device in devices for i, age in enumerate(AGES.values())]
    pool = await create_pool(SETTINGS)
    try:
        await TimescaleSink(pool).write(points)
    finally:
        await pool.close()
    conn = await db_connect()
    try:
        for device, days in devices.items():
            await conn.execute("UPDATE devices SET retention_days = $2 WHERE device_id = $1",
                               device, days)
        # A raw chunk past RETENTION_DAYS is trimmed once: the pipeline refuses readings
        # that old, so none arrive later. These rows come straight through the sink, maybe
        # into a chunk an earlier run of this test trimmed: let this run trim it again.
        await conn.execute(
            "UPDATE storage.chunk_maintenance m SET trimmed_at = NULL "
            "FROM timescaledb_information.chunks c "
            "WHERE m.chunk = format('%I.%I', c.chunk_schema, c.chunk_name) "
            "AND c.hypertable_schema = 'storage' AND c.hypertable_name = 'readings' "
            "AND EXISTS (SELECT 1 FROM unnest($1::timestamptz[]) t "
            "            WHERE t >= c.range_start AND t < c.range_end)",
            [now - age for age in AGES.values()])
    finally:
        await conn.close()


async def _ages_left(devices: list[str], now: datetime) -> dict[str, list[str]]:
    conn = await db_connect()
    try:
        rows = await conn.fetch(
            "SELECT device_id, time FROM readings WHERE device_id = ANY($1)", devices)
    finally:
        await conn.close()
    names = {round((now - age).timestamp()): name for name, age in AGES.items()}
    left: dict[str, list[str]] = {d: [] for d in devices}
    for row in rows:
        left[row["device_id"]].append(names[round(row["time"].timestamp())])
    return {d: sorted(v, key=list(AGES).index) for d, v in left.items()}


async def test_retention_per_device_shorter_and_longer_than_the_default(stack) -> None:
    ids, _ = fleet("retention-", 3)
    short, default, long_ = ids
    now = datetime.now(timezone.utc).replace(microsecond=0)
    await _write({short: 7, default: None, long_: 200}, now)
    try:
        report = await maintain(SETTINGS, unique("test-"), wait=120)
        assert report is not None
        left = await _ages_left(ids, now)
        # exact to the row for an override; whole chunks past RETENTION_DAYS (90) for the
        # default; a longer override keeps its rows in trimmed chunks up to its own horizon
        assert left == {short: ["1h", "3d"],
                        default: ["1h", "3d", "10d"],
                        long_: ["1h", "3d", "10d", "95d", "150d"]}
        assert report.horizon_days >= 200
        # the 10-day-old row; the older ones went with trimmed or dropped chunks
        assert report.deleted_rows.get("7 days", 0) >= 1
        assert report.trimmed_chunks >= 2
        assert report.license in ("apache", "timescale")
        assert any("analyze" in name for name in report.seconds)

        # the aggregates keep their own, longer retention
        conn = await db_connect()
        try:
            buckets = await conn.fetchval(
                "SELECT count(*) FROM readings_1h WHERE device_id = $1", default)
            compacted = await conn.fetchval(
                "SELECT m.compacted_at IS NOT NULL AND c.reloptions @> '{fillfactor=100}' "
                "FROM timescaledb_information.chunks ch "
                "JOIN storage.chunk_maintenance m "
                "  ON m.chunk = format('%I.%I', ch.chunk_schema, ch.chunk_name) "
                "JOIN pg_index i ON i.indrelid = m.chunk::regclass "
                "JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE ch.hypertable_schema = 'storage' AND ch.hypertable_name = 'readings' "
                "AND $1 >= ch.range_start AND $1 < ch.range_end", now - AGES["3d"])
            clustered = await conn.fetchval(
                "SELECT bool_or(i.indisclustered) FROM timescaledb_information.chunks ch "
                "JOIN pg_index i "
                "  ON i.indrelid = format('%I.%I', ch.chunk_schema, ch.chunk_name)::regclass "
                "WHERE ch.hypertable_schema = 'storage' AND ch.hypertable_name = 'readings_1h' "
                "AND $1 >= ch.range_start AND $1 < ch.range_end", now - AGES["95d"])
        finally:
            await conn.close()
        assert buckets == 6
        assert compacted, "the closed 3-day-old chunk's index was rebuilt packed"
        assert clustered, "the closed readings_1h chunk was clustered on (series_id, bucket)"

        again = await maintain(SETTINGS, unique("test-"), wait=120)
        assert again is not None
        assert await _ages_left(ids, now) == left  # a second run changes nothing
    finally:
        await forget_devices(ids)


async def test_only_one_run_at_a_time_and_the_timer_waits_for_its_interval(stack) -> None:
    holder = unique("holder-")
    conn = await maintenance_connection(SETTINGS)
    try:
        await wait_for(lambda: acquire_lease(conn, holder), 120, "the maintenance lease")
        with pytest.raises(LeaseTaken, match=holder):
            await maintain(SETTINGS, unique("other-"), wait=0)
        await release_lease(conn, holder)
        assert await maintain(SETTINGS, unique("first-"), wait=120) is not None
        assert await maintain(SETTINGS, unique("timer-"), due_after=timedelta(hours=1)) is None
    finally:
        await release_lease(conn, holder)
        await conn.close()


async def test_compression_state_follows_the_license(stack) -> None:
    conn = await db_connect()
    try:
        license_ = await conn.fetchval("SHOW timescaledb.license")
        state = (await read_compression_state(conn)).as_maintenance_report()
    finally:
        await conn.close()
    assert state["license"] == license_
    assert set(state["hypertables"]) == {
        "storage.readings", "storage.readings_1m", "storage.readings_1h"}
    if license_ == "apache":
        assert (state["available"], state["state"]) == (False, "unavailable: apache build")
    else:
        assert state["available"] and state["state"] in ("enabled", "not enabled yet",
                                                         "partly enabled")


def test_the_maintenance_command_reports_what_it_did(stack) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams.app", "maintenance", "--wait", "120"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for expected in ("timescaledb license:", "raw retention horizon:", "chunks dropped:",
                     "rows deleted for per-device retention:",
                     "analyzed: storage.readings, storage.readings_1m, storage.readings_1h",
                     "compression:"):
        assert expected in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr


async def test_the_leader_runs_maintenance_on_its_timer(start_worker) -> None:
    _, nothing = fleet("maint-none-", 1)
    worker = start_worker("maintenance", DEVICE_FILTER=nothing, MAINTENANCE_INTERVAL="2")

    async def ran() -> bool:
        assert worker.process is not None and worker.process.poll() is None, worker.log_text()
        conn = await db_connect()
        try:
            return await conn.fetchval(
                "SELECT count(*) > 0 FROM storage.maintenance_runs WHERE holder = $1",
                f"leader@{socket.gethostname()}:{worker.process.pid}")
        finally:
            await conn.close()

    await wait_for(ran, 120, "a maintenance run by the worker's leader timer")
    text = worker.log_text()
    assert "storage maintenance: raw retention horizon" in text
    assert "Traceback" not in text

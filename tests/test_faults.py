"""Faults on the real local stack: nothing lost, nothing duplicated, aggregates exact."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from tests.stack import REPO, Stream, assert_exactly_once, count_rows, fleet, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _rows_at_least(devices: list[str], expected: int) -> bool:
    return await count_rows(devices) >= expected


async def test_three_sigkills_during_a_stream_lose_and_duplicate_nothing(start_worker) -> None:
    devices, only = fleet("sigkill-", 10)
    stream = Stream(devices, readings_per_s=2000, seconds=15, metrics=2)  # 60,000 readings
    publishing = asyncio.create_task(stream.run())
    env = {"DEVICE_FILTER": only, "SINK_BATCH_POINTS": "2000"}
    worker = start_worker("sigkill-0", **env)
    group = worker.env["APP_ID"]
    for kill in range(1, 4):
        rows = await count_rows(devices)
        await wait_for(lambda: _rows_at_least(devices, rows + 5000), 90, "rows to flow")
        worker.kill()
        worker = start_worker(f"sigkill-{kill}", APP_ID=group, **env)
    await publishing
    assert stream.points >= 50_000
    await assert_exactly_once(stream)


async def test_postgres_stopped_for_30_seconds_mid_stream_loses_nothing(start_worker) -> None:
    devices, only = fleet("pgdown-", 5)
    stream = Stream(devices, readings_per_s=500, seconds=50)
    publishing = asyncio.create_task(stream.run())
    worker = start_worker("pgdown", DEVICE_FILTER=only)
    await wait_for(lambda: _rows_at_least(devices, 1000), 90, "rows to flow")
    major = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    version = next(line.split()[0] for line in major.stdout.splitlines()
                   if line.split()[1] == "devicestream")
    subprocess.run(["pg_ctlcluster", version, "devicestream", "stop", "-m", "fast"], check=True)
    try:
        await asyncio.sleep(30)
        assert worker.process.poll() is None, "the worker must survive the outage"
    finally:
        subprocess.run(["bash", str(REPO / "stack" / "up.sh")], check=True, capture_output=True)
    await publishing
    await assert_exactly_once(stream)
    assert "write rows failed" in worker.log_text()


async def test_pgbouncer_restarted_mid_stream_loses_nothing(start_worker) -> None:
    devices, only = fleet("pgbrestart-", 5)
    stream = Stream(devices, readings_per_s=500, seconds=30)
    publishing = asyncio.create_task(stream.run())
    worker = start_worker("pgbrestart", DEVICE_FILTER=only)
    await wait_for(lambda: _rows_at_least(devices, 1000), 90, "rows to flow")
    pid = int((REPO / ".stack" / "pgbouncer" / "pgbouncer.pid").read_text().strip())
    subprocess.run(["kill", "-INT", str(pid)], check=True)
    await asyncio.sleep(5)
    subprocess.run(["bash", str(REPO / "stack" / "up.sh")], check=True, capture_output=True)
    await publishing
    await assert_exactly_once(stream)
    assert worker.process.poll() is None


async def test_a_killed_worker_partitions_are_taken_over_by_the_other(start_worker) -> None:
    devices, only = fleet("takeover-", 8)
    stream = Stream(devices, readings_per_s=1000, seconds=40)
    publishing = asyncio.create_task(stream.run())
    first = start_worker("takeover-1", DEVICE_FILTER=only)
    second = start_worker("takeover-2", DEVICE_FILTER=only, APP_ID=first.env["APP_ID"])
    await wait_for(lambda: _rows_at_least(devices, 5000), 120, "rows to flow")
    await asyncio.sleep(5)  # both hold partitions now
    first.kill()
    killed_at = time.monotonic()
    await publishing
    await assert_exactly_once(stream, timeout=120)
    took = time.monotonic() - killed_at
    print(f"takeover complete (all rows) {took:.1f}s after the kill")
    assert second.process.poll() is None

"""The query routes on a real worker reading from the local stack's streaming replica
(``make stack-up REPLICA=1``): served by the replica while it keeps up, by the primary
while its replay is paused past READ_MAX_LAG_SECONDS or while it is stopped, every
fallback counted in /pipeline/db and /metrics, and its lag shown there."""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.stack import (
    REPLICA_PORT,
    count_rows,
    fleet,
    publish_readings,
    replica_pg_ctl,
    replica_sql,
    rows_at_least,
    wait_for,
)
from tests.web.worker_web import get

pytestmark = [pytest.mark.integration, pytest.mark.slow]

async def _latest_value(worker: Any, device: str) -> Any:
    status, body = await get(worker, f"/devices/{device}/latest")
    return status, body


async def _reads(worker: Any) -> dict[str, Any]:
    status, body = await get(worker, "/pipeline/db")
    assert status == 200, body
    return body["reads"]


async def test_reads_use_the_replica_and_fall_back_to_the_primary_when_it_lags_or_stops(
        replica: None, start_worker) -> None:
    devices, device_filter = fleet("replica-", 2)
    worker = start_worker("replica", DEVICE_FILTER=device_filter, READ_DB_HOST="127.0.0.1",
                          READ_DB_PORT=str(REPLICA_PORT), READ_MAX_LAG_SECONDS="1")
    first = await publish_readings(devices, 20)
    await wait_for(lambda: rows_at_least(devices, first), 60, "the first readings stored")

    async def served_by_replica() -> bool:
        status, _ = await _latest_value(worker, devices[0])
        return status == 200 and (await _reads(worker)).get("reads", {}).get("replica", 0) > 0
    await wait_for(served_by_replica, 30, "a read served by the replica")
    reads = await _reads(worker)
    assert reads["target"] == "replica" and not reads["fallbacks"], reads
    assert reads["replica"]["standby"] is True

    async def primary_lists_the_replica() -> bool:
        status, body = await get(worker, "/pipeline/db")
        return status == 200 and any(r["state"] == "streaming" for r in body["replicas"] or [])
    await wait_for(primary_lists_the_replica, 30, "pg_stat_replication in /pipeline/db")

    # Replay paused: the replica falls behind the new readings, reads go to the primary
    # and see them.
    replica_sql("SELECT pg_wal_replay_pause()")
    try:
        later = int(time.time() * 1000) - 1_800_000  # after the first ones (2 hours ago)
        total = first + await publish_readings(devices, 10, start_ms=later)
        await wait_for(lambda: rows_at_least(devices, total), 60, "the later readings stored")

        async def fresh_from_the_primary() -> bool:
            status, body = await _latest_value(worker, devices[0])
            newest = datetime.fromisoformat(body["time"]) if status == 200 else None
            return newest is not None and newest.timestamp() * 1000 >= later
        await wait_for(fresh_from_the_primary, 30, "the newest reading, read from the primary")
        reads = await _reads(worker)
        assert reads["fallbacks"].get("replica_lagging", 0) >= 1, reads
        assert reads["replica"]["lag_seconds"] > 1
    finally:
        replica_sql("SELECT pg_wal_replay_resume()")

    # Replica stopped: reads still answer, from the primary.
    replica_pg_ctl("stop", "-m", "fast")
    try:
        async def served_while_down() -> bool:
            status, _ = await _latest_value(worker, devices[1])
            return status == 200 and (await _reads(worker))["fallbacks"].get("replica_down", 0) > 0
        await wait_for(served_while_down, 30, "reads from the primary while the replica is down")
        status, metrics = await get(worker, "/metrics")
        assert status == 200
        assert 'devicestream_read_fallbacks_total{reason="replica_down"}' in metrics
        assert "devicestream_read_replica_up 0.0" in metrics
    finally:
        replica_pg_ctl("start")
    assert await count_rows(devices) == total

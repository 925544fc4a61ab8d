"""Health routes and the stall watchdog of a real worker against the real local stack."""
from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.topics import device_topic
from streams.worker import EXIT_STALLED
from web.health import STALL_EXIT_DELAY_SECONDS
from tests.stack import (
    RawProducer,
    Worker,
    count_rows,
    create_topics,
    db_connect,
    fleet,
    rows_at_least,
    stored_points,
    wait_for,
)
from tests.web.worker_web import get

pytestmark = pytest.mark.integration

STALL_SECONDS = 8


async def _metric(worker: Worker, name: str) -> float:
    _, text = await get(worker, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


@pytest.mark.slow
async def test_a_write_that_hangs_is_a_stall_the_worker_reports_then_exits_on(
        start_worker) -> None:
    (device,), only = fleet("stall-", 1)
    topic, key = device_topic(device), device.encode()
    await create_topics([topic])
    base = int(time.time() * 1000) - 60_000

    def reading(i: int) -> dict:
        return {"device_id": device, "time": base + i, "metrics": {"t": float(i)}}

    async with RawProducer() as producer:
        await producer.send(topic, key, reading(0))
        worker = start_worker("stall", DEVICE_FILTER=only, STALL_SECONDS=str(STALL_SECONDS))
        await wait_for(lambda: rows_at_least([device], 1), 90, "the first row")
        assert (await get(worker, "/health/live"))[0] == 200

        async def ready() -> bool:
            return (await get(worker, "/health/ready"))[0] == 200
        await wait_for(ready, 30, "the worker to be ready")

        # Step 1: the worker's next write hangs on a row lock (the database stays up).
        lock = await db_connect()
        hold = lock.transaction()
        await hold.start()
        await lock.fetchrow("SELECT * FROM devices WHERE device_id = $1 FOR UPDATE", device)
        try:
            for i in range(1, 51):
                partition, _ = await producer.send(topic, key, reading(i))

            # Step 2: readiness fails on the stall, naming the partition.
            async def stalled() -> bool:
                status, body = await get(worker, "/health/ready")
                return status == 503 and "not_stalled" in body["failing"]
            await wait_for(stalled, STALL_SECONDS + 30, "/health/ready to report the stall")
            _, body = await get(worker, "/health/ready")
            assert f"{topic}[{partition}]" in body["checks"]["not_stalled"]["detail"]
            assert body["checks"]["database"]["ok"], "the database is up: it is a stall"
            # Step 3: counted in /metrics.
            assert await _metric(worker, "devicestream_stalls_total") == 1
            assert await _metric(worker, "devicestream_stalled_partitions") == 1
            assert await _metric(worker, "devicestream_ready") == 0
            # Step 4: the worker exits with its stall status and logs the partition.
            deadline = time.monotonic() + STALL_EXIT_DELAY_SECONDS + 30
            while worker.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert worker.process.poll() == EXIT_STALLED
            log = worker.log_text()
            assert "ingest stalled: 1 partitions" in log and f"{topic}[{partition}]" in log
        finally:
            await hold.rollback()
            await lock.close()

    # Step 5: the next worker (its supervisor's restart) writes what was not committed,
    # exactly once.
    start_worker("after-stall", DEVICE_FILTER=only, APP_ID=worker.env["APP_ID"])
    await wait_for(lambda: rows_at_least([device], 51), 90, "the rest of the rows")
    await asyncio.sleep(2)
    assert await count_rows([device]) == 51
    assert await stored_points([device]) == {
        (device, "t", base + i, float(i)): 1 for i in range(51)}

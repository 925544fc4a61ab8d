"""Downsampling on the real stack: readings_1m / readings_1h equal SQL over readings."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from streams.topics import device_topic
from tests.stack import (
    RawProducer,
    Stream,
    aggregate_mismatches,
    assert_exactly_once,
    create_topics,
    fleet,
    rows_at_least,
    wait_for,
)

pytestmark = pytest.mark.integration


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_aggregates_are_exact_with_disorder_duplicates_late_readings_and_mixed_arrays(
    start_worker,
) -> None:
    devices, only = fleet("agg-", 2)
    await create_topics([device_topic(d) for d in devices])
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=3)
    worker = start_worker("aggregates", AGGREGATE_GRACE="10", DEVICE_FILTER=only)
    async with RawProducer() as producer:
        for device in devices:
            topic, key = device_topic(device), device.encode()

            def reading(seconds: float, value: object, metric: str = "t") -> dict:
                return {"device_id": device, "time": _iso(base + timedelta(seconds=seconds)),
                        "metrics": {metric: value}}

            await producer.send(topic, key, [reading(s, s / 7) for s in (50, 10, 130, 70, 3590)])
            await producer.send(topic, key, reading(10, 999.0))  # conflicting duplicate
            await producer.send(topic, key, [reading(50, 50 / 7), reading(61, "bad"),
                                             reading(62, -4.25), reading(3601, 1e300)])
            await producer.send(topic, key, reading(7300, 1.0))  # clock jumps two hours
            await asyncio.sleep(1)
            # Late: their buckets closed long ago by the device's event time.
            await producer.send(topic, key, [reading(15, -100.0), reading(3599, 5.5, "h")])
    expected_rows = len(devices) * 10
    await wait_for(lambda: rows_at_least(devices, expected_rows), 90, f"{expected_rows} rows")
    assert await aggregate_mismatches(devices) == []
    assert "Traceback" not in worker.log_text()


# The stream runs while the worker is killed or stopped: a backlog published beforehand
# could be written whole between two polls, and the fault would then hit an idle worker.
@pytest.mark.slow
async def test_aggregates_stay_exact_when_the_worker_is_killed_mid_stream_and_restarted(
    start_worker,
) -> None:
    devices, only = fleet("kill-", 8)
    stream = Stream(devices, readings_per_s=800, seconds=40, metrics=2)
    publishing = asyncio.create_task(stream.run())
    env = {"SINK_BATCH_POINTS": "1000", "DEVICE_FILTER": only}
    worker = start_worker("killed", **env)
    await wait_for(lambda: rows_at_least(devices, 1000), 90, "the first rows")
    assert not publishing.done(), "the kill would come after the stream ended"
    worker.kill()
    start_worker("restarted", APP_ID=worker.env["APP_ID"], **env)
    await publishing
    await assert_exactly_once(stream)


@pytest.mark.slow
async def test_aggregates_stay_exact_when_one_of_two_workers_stops(start_worker) -> None:
    devices, only = fleet("pair-", 8)
    stream = Stream(devices, readings_per_s=800, seconds=40, metrics=2)
    publishing = asyncio.create_task(stream.run())
    first = start_worker("pair-1", SINK_BATCH_POINTS="500", DEVICE_FILTER=only)
    second = start_worker("pair-2", SINK_BATCH_POINTS="500", DEVICE_FILTER=only,
                          APP_ID=first.env["APP_ID"])
    await wait_for(lambda: rows_at_least(devices, 1000), 90, "the first rows")
    assert not publishing.done(), "the stop would come after the stream ended"
    assert second.stop(timeout=40) == 0
    await publishing
    await assert_exactly_once(stream)

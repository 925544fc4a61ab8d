"""Event clocks in a real worker in shared topic mode: devices interleaved on one partition
of ``device-data``, each reading judged late by its own device's clock only."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.topics import SHARED_TOPIC, TopicProvisioner
from tests.records import late_by_own_device
from tests.stack import PrivateBroker, unique
from tests.web.worker_web import wait_for_answer

pytestmark = pytest.mark.integration


async def test_late_readings_are_counted_per_device_on_a_shared_partition(
        private_broker: PrivateBroker, start_worker) -> None:
    async with TopicProvisioner(private_broker.settings()) as topics:
        await topics.ensure([SHARED_TOPIC], partitions=1)
    # one device runs an hour ahead of two, whose readings would all be late by its clock
    minutes = [0, 5, -3, 9, 2, -8, 12, 11, -20, 15, 14, 3, 30, 1, 29, 28]
    ahead, *behind = (unique("clock-") for _ in range(3))
    lead = {ahead: 60, **{d: 0 for d in behind}}
    messages = [(d, (m + lead[d]) * 60) for m in minutes for d in lead]
    base = datetime.now(timezone.utc) - timedelta(hours=3)
    producer = AIOKafkaProducer(bootstrap_servers=private_broker.address, linger_ms=20)
    await producer.start()
    try:
        pending = [await producer.send(SHARED_TOPIC, orjson.dumps({
            "device_id": d, "time": (base + timedelta(seconds=s)).isoformat(),
            "metrics": {"t": 1.0}}), key=d.encode(), partition=0) for d, s in messages]
        await producer.flush()
        assert {(await p).partition for p in pending} == {0}
    finally:
        await producer.stop()

    worker = start_worker("clock-shared", TOPIC_MODE="shared", AGGREGATE_GRACE="0",
                          **private_broker.worker_env())
    totals = await wait_for_answer(
        worker, "/pipeline/throughput",
        lambda t: t["rows_written_total"] == len(messages), "every reading stored")
    expected = late_by_own_device(messages)
    assert 0 < expected < late_by_own_device([("one", s) for _, s in messages])
    assert totals["late_readings_total"] == expected

"""Helpers for the stats-route integration tests: reading a worker's routes and producing
messages to exact partitions of a fresh device topic on a private broker.

A worker reads every device topic of its broker. On the shared local broker other tests
(and other people's runs) keep adding topics and messages, so exact counts and a group lag
of zero need a broker of the test's own (``bench.private_broker.PrivateBroker``, the
``private_broker`` fixture). The database and pgBouncer stay the shared local stack's.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import orjson
from aiokafka import AIOKafkaProducer

from streams.topics import TopicProvisioner, device_topic
from tests.stack import PrivateBroker, Worker, unique

# The worker re-measures lag every 3 s; a test waiting for a figure allows this much.
SETTLE_SECONDS = 45.0


async def get(worker: Worker, path: str) -> tuple[int, Any]:
    """``worker.get(path)``: status and decoded body, with the worker's READ_TOKEN."""
    return await worker.get(path)


async def wait_for_answer(worker: Worker, path: str, accept: Callable[[Any], bool],
                          what: str, timeout: float = SETTLE_SECONDS) -> Any:
    """Poll ``path`` until a 200 answer satisfies ``accept``; return that answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert worker.process is not None and worker.process.poll() is None, (
            f"worker died:\n{worker.log_text()[-3000:]}")
        status, body = await get(worker, path)
        last = (status, body)
        if status == 200 and accept(body):
            return body
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r:.2000}")


def reading(device: str, index: int, metrics: int = 3) -> bytes:
    moment = datetime.now(timezone.utc) - timedelta(seconds=60) + timedelta(milliseconds=index)
    return orjson.dumps({
        "device_id": device,
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "metrics": {f"m{n}": float(index + n) for n in range(metrics)},
    })


async def new_device_topic(broker: PrivateBroker, prefix: str,
                           partitions: int = 4) -> tuple[str, str]:
    device = unique(prefix)
    topic = device_topic(device)
    async with TopicProvisioner(broker.settings()) as topics:
        await topics.ensure([topic], partitions=partitions)
    return device, topic


async def produce(broker: PrivateBroker, topic: str, key: bytes,
                  values_by_partition: dict[int, list[bytes]]) -> None:
    """Send every value to its partition, in batches of many records (linger): the local
    broker's ListOffsets would then answer a wrong end, so the test shows ours is right."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.address, linger_ms=20)
    await producer.start()
    try:
        pending = [await producer.send(topic, value, key=key, partition=partition)
                   for partition, values in values_by_partition.items() for value in values]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def partitions_of(report: dict[str, Any], topic: str) -> dict[int, dict[str, Any]]:
    return {p["partition"]: p for p in report["partitions"] if p["topic"] == topic}

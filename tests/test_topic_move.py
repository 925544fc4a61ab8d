"""Moving from per-device topics to shared without stopping producers (docs/architecture.md,
"Topic modes"): a worker in ``TOPIC_MODE=both`` on a broker of the test's own reads an
existing per-device backlog, then readings its devices publish to their own topics, to
``device-data``, or to both (a producer that retried after switching), interleaved, so a
device's readings arrive out of order across the two topics. Every distinct reading is
stored once, the 1-minute aggregates count each once, readings older than their device's
clock count as late, nothing is dead-lettered, and a device ``DEVICE_FILTER`` refuses is
read from neither topic.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from producers.device_producer import DeviceProducer, ProducerConfig
from streams.settings import Settings, TopicMode
from streams.topics import SHARED_TOPIC
from tests.stack import (
    PrivateBroker,
    aggregate_mismatches,
    count_rows,
    db_connect,
    fleet,
    stored_points,
    unique,
    wait_for,
)
from tests.web.worker_web import wait_for_answer

pytestmark = pytest.mark.integration

READINGS = 48  # per device, 10 s apart: 8 minutes, several 1-minute buckets
STEP_MS = 10_000
BACKLOG = 16  # readings 0-15 of the first two devices are on their topics before the worker
HELD_BACK = (17, 23, 29, 35)  # published last, to the device's own topic: late by then
PARTITIONS = "2"
OWN, SHARED, BOTH = "own", "shared", "both"
LAG_SAMPLE_SECONDS = 3.5  # web.views.LAG_INTERVAL_SECONDS (3 s), and some


def reading(device: str, index: int, base_ms: int) -> dict[str, Any]:
    return {"device_id": device, "time": base_ms + index * STEP_MS,
            "metrics": {"m0": float(index), "m1": index * 0.5 + len(device) % 7}}


class Publisher:
    """Two producers, as during the move: a device publishing per-device and one switched to
    shared; counts the copies of each reading it published and the points."""

    def __init__(self, broker: PrivateBroker, base_ms: int) -> None:
        self.base_ms = base_ms
        settings = broker.settings(DEVICE_TOPIC_PARTITIONS=PARTITIONS)
        config = ProducerConfig(max_batch_readings=4, linger=0.005)
        self.to = {
            OWN: DeviceProducer(_mode(settings, TopicMode.PER_DEVICE), config),
            SHARED: DeviceProducer(_mode(settings, TopicMode.SHARED), config),
        }
        self.copies: Counter[tuple[str, int]] = Counter()  # (device, index): copies sent
        self.points = 0

    async def __aenter__(self) -> "Publisher":
        for producer in self.to.values():
            await producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for producer in self.to.values():
            await producer.stop()

    async def send(self, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """Each (where, reading) in order, then wait until the broker has them all."""
        for where, item in sends:
            await self.to[where].send_many([item])
            self.copies[item["device_id"], (item["time"] - self.base_ms) // STEP_MS] += 1
            self.points += len(item["metrics"])
        for producer in self.to.values():
            await producer.flush()


def _mode(settings: Settings, mode: TopicMode) -> Settings:
    return replace(settings, topics=replace(settings.topics, mode=mode))


def routed(device: str, index: int, where: str, base_ms: int) -> list[tuple[str, dict]]:
    """The sends of one reading: to its device's topic, to device-data, or to both."""
    item = reading(device, index, base_ms)
    return [(OWN, item), (SHARED, item)] if where == BOTH else [(where, item)]


async def _topics_of(broker: PrivateBroker) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _minute_aggregates(devices: list[str]) -> Counter[tuple[str, str, int, int, float]]:
    """readings_1m of ``devices`` as a multiset of (device, metric, bucket ms, count, sum)."""
    conn = await db_connect()
    try:
        rows = await conn.fetch(
            "SELECT device_id, metric, (extract(epoch FROM bucket) * 1000)::bigint AS ms, "
            "count, sum FROM readings_1m WHERE device_id = ANY($1)", devices)
    finally:
        await conn.close()
    return Counter((r["device_id"], r["metric"], r["ms"], r["count"], round(r["sum"], 6))
                   for r in rows)


async def test_a_worker_in_both_mode_stores_each_reading_once_from_either_topic(
        private_broker: PrivateBroker, start_worker) -> None:
    began = time.monotonic()
    devices, device_filter = fleet("move-", 4)
    outsider = unique("moveout-")  # DEVICE_FILTER refuses it: read from neither topic
    rng = random.Random(17)
    base_ms = (int(time.time() * 1000) - 2 * 3600 * 1000) // 60_000 * 60_000 + 5_000

    async with Publisher(private_broker, base_ms) as publisher:
        # An existing per-device deployment: a backlog on the first two devices' topics.
        await publisher.send([(OWN, reading(d, i, base_ms))
                              for i in range(BACKLOG) for d in devices[:2]])
        assert SHARED_TOPIC not in await _topics_of(private_broker)

        worker = start_worker("topic-move", TOPIC_MODE="both", DEVICE_FILTER=device_filter,
                              AGGREGATE_GRACE="0", DEVICE_TOPIC_PARTITIONS=PARTITIONS,
                              **private_broker.worker_env())

        async def shared_topic_made() -> bool:
            return SHARED_TOPIC in await _topics_of(private_broker)
        await wait_for(shared_topic_made, 30, "the worker to create device-data")

        # The move: every device's remaining readings to its topic, device-data or both,
        # shuffled (out of order across the topics); the backlog's second half again to
        # device-data (producers that retried after switching); two devices whose topics
        # appear only now; the outsider everywhere.
        sends: list[tuple[str, dict]] = []
        for device in devices:
            for index in range(BACKLOG if device in devices[:2] else 0, READINGS):
                if index not in HELD_BACK:
                    where = rng.choices([OWN, SHARED, BOTH], weights=[4, 4, 2])[0]
                    sends += routed(device, index, where, base_ms)
        for device in devices[:2]:
            sends += [(SHARED, reading(device, i, base_ms)) for i in range(BACKLOG // 2, BACKLOG)]
        rng.shuffle(sends)
        await publisher.send(sends)
        outsider_sends = routed(outsider, 0, BOTH, base_ms) + routed(outsider, 1, SHARED, base_ms)
        await publisher.send(outsider_sends)
        outsider_points = 3 * len(reading(outsider, 0, base_ms)["metrics"])

        await _drained(worker, publisher.points - outsider_points, timeout=45)
        late_before = (await worker.get("/pipeline/throughput"))[1]["late_readings_total"]

        # Readings a device published late, after newer ones went to device-data.
        held_back = [item for d in devices for i in HELD_BACK
                     for item in routed(d, i, BOTH if i == HELD_BACK[0] else OWN, base_ms)]
        await publisher.send(held_back)

    await _drained(worker, publisher.points - outsider_points, timeout=30)
    totals = (await worker.get("/pipeline/throughput"))[1]

    # Every distinct reading of every device once: a multiset, not a set.
    expected = Counter((d, metric, base_ms + i * STEP_MS, value)
                       for d in devices for i in range(READINGS)
                       for metric, value in reading(d, i, base_ms)["metrics"].items())
    stored = await stored_points(devices)
    assert stored == expected, (
        f"missing {sorted(expected - stored)[:3]}, extra {sorted(stored - expected)[:3]}")
    duplicated = sum(c - 1 for c in publisher.copies.values())
    assert duplicated >= 40 and set(publisher.copies) == {
        (d, i) for d in devices for i in range(READINGS)} | {(outsider, 0), (outsider, 1)}
    assert totals["rows_written_total"] == len(expected), \
        "rows written: each distinct reading once (a second copy adds none), none of the outsider"
    assert totals["dead_letters_total"] == 0
    assert totals["late_readings_total"] - late_before == len(held_back), (
        "each held-back copy is late by its device's clock, and still stored once")

    # 1-minute aggregates count each reading once (not each copy), and match the raw rows.
    minute: Counter[tuple[str, str, int]] = Counter()
    sums: Counter[tuple[str, str, int]] = Counter()
    for d, metric, ms, value in expected:
        minute[d, metric, ms // 60_000 * 60_000] += 1
        sums[d, metric, ms // 60_000 * 60_000] += value
    assert await _minute_aggregates(devices) == Counter(
        (*key, count, round(sums[key], 6)) for key, count in minute.items())
    assert await aggregate_mismatches(devices) == []

    assert await count_rows([outsider]) == 0, "DEVICE_FILTER: by key on device-data"
    followed = {p["topic"] for p in (await worker.get("/pipeline/lag"))[1]["partitions"]}
    assert followed == {SHARED_TOPIC} | {f"device-data-{d}" for d in devices}, \
        "the outsider's topic is not followed, nor the dead-letter topic"
    log = worker.log_text()
    assert "Traceback" not in log and "dead-lettering" not in log
    assert time.monotonic() - began < 90


async def _drained(worker: Any, points: int, timeout: float) -> None:
    """Wait until the worker consumed ``points`` points and committed every offset (lag 0:
    each batch is written and its late readings counted)."""
    await wait_for_answer(worker, "/pipeline/throughput", lambda t: t["points_total"] >= points,
                          f"{points} points consumed", timeout=timeout)
    await asyncio.sleep(LAG_SAMPLE_SECONDS)  # then the lag sample was measured since
    await wait_for_answer(worker, "/pipeline/lag", lambda lag: lag["total_lag"] == 0,
                          "lag 0", timeout=15)

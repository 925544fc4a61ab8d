"""/pipeline/lag and /pipeline/throughput of real workers, checked against counts the test
produced itself, on a Tansu broker of the test's own (whose ListOffsets answers a wrong end:
see STACK.md) and the shared database."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.stack import PrivateBroker
from tests.web.worker_web import (
    SETTLE_SECONDS,
    get,
    new_device_topic,
    partitions_of,
    produce,
    reading,
    wait_for_answer,
)

pytestmark = pytest.mark.integration

COUNTS = {0: 7, 1: 0, 2: 25, 3: 3}  # messages per partition; partition 1 stays empty
INVALID_PARTITION = 3  # its messages are readings too old to keep: dead letters
METRICS = 3  # per valid reading


def _has_offsets(topic: str, committed: dict[int, int], end: dict[int, int]):
    def accept(report: dict[str, Any]) -> bool:
        rows = partitions_of(report, topic)
        return set(rows) == set(end) and all(
            rows[p]["committed"] == committed[p] and rows[p]["end"] == end[p]
            and rows[p]["lag"] == end[p] - committed[p] for p in end)
    return accept


def _too_old(device: str) -> bytes:
    return b'{"device_id": "' + device.encode() + b'", "time": 1, "metrics": {"x": 1}}'


async def _produce_counts(broker: PrivateBroker, prefix: str) -> str:
    device, topic = await new_device_topic(broker, prefix)
    await produce(broker, topic, device.encode(), {
        p: [_too_old(device) if p == INVALID_PARTITION else reading(device, p * 1000 + i, METRICS)
            for i in range(n)]
        for p, n in COUNTS.items()})
    return topic


async def test_lag_and_throughput_count_what_was_produced(private_broker: PrivateBroker,
                                                          start_worker) -> None:
    topic = await _produce_counts(private_broker, "weblag-")
    worker = start_worker("web-lag", **private_broker.worker_env())
    invalid = COUNTS[INVALID_PARTITION]
    valid = sum(COUNTS.values()) - invalid

    # Rates cover the last 10 s: read them as soon as everything is stored and sampled.
    totals = await wait_for_answer(
        worker, "/pipeline/throughput",
        lambda t: t["messages_total"] == valid + invalid and t["points_per_second"] > 0
        and t["rows_per_second"] > 0 and t["dead_letters_per_second"] > 0,
        "the totals and rates of what was produced")
    assert totals["messages_per_second"] > 0

    # consumed and stored: committed = end = what was produced, per partition
    own = await wait_for_answer(worker, "/pipeline/lag",
                                _has_offsets(topic, COUNTS, COUNTS), f"{topic} fully committed")
    assert own["total_lag"] == 0
    group = await wait_for_answer(worker, "/pipeline/lag?scope=group",
                                  _has_offsets(topic, COUNTS, COUNTS), "the group view")
    topics = group.pop("topics")
    assert group == own  # a single worker holds every partition of its group
    # Tansu keeps every message and has no DescribeLogDirs: no bytes, never a zero
    assert topics == [{"topic": topic, "messages": sum(COUNTS.values()), "bytes": None}]

    # the broker is the test's own: the worker's totals are exactly what was produced
    _, totals = await get(worker, "/pipeline/throughput")
    assert totals["messages_total"] == valid + invalid
    assert totals["points_total"] == valid * METRICS
    assert totals["rows_written_total"] == valid * METRICS
    assert totals["dead_letters_total"] == invalid
    assert totals["sink_batches_total"] >= 1
    assert 0 < totals["sink_last_batch_points"] <= valid * METRICS
    assert 0 < totals["write_latency_p50_seconds"] <= totals["write_latency_p99_seconds"] < 60


async def test_lag_of_messages_read_but_not_yet_stored(private_broker: PrivateBroker,
                                                       start_worker) -> None:
    """The worker holds every batch for two minutes: nothing is committed, lag = end."""
    topic = await _produce_counts(private_broker, "weblagheld-")
    worker = start_worker("web-lag-held", SINK_LINGER="120", SINK_BATCH_POINTS="10000000",
                          **private_broker.worker_env())
    zero = {p: 0 for p in COUNTS}
    produced = sum(COUNTS.values())

    # from its first answer on, a fresh worker reports measured figures or says it has none
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        assert time.monotonic() < deadline, "the worker never answered /pipeline/lag"
        status, body = await get(worker, "/pipeline/lag")
        if status == 200:
            assert _has_offsets(topic, zero, COUNTS)(body), body
            assert body["total_lag"] == produced
            break
        assert status in (0, 503), (status, body)  # 0: the web server is not up yet
        if status == 503:
            assert body["error"].startswith("lag not measured yet"), body
        await asyncio.sleep(0.2)

    # read (counted) but held in the batch: still nothing committed
    await wait_for_answer(worker, "/pipeline/throughput",
                          lambda t: t["messages_total"] == produced, "the worker to read them")
    await asyncio.sleep(4)  # at least one more lag measurement
    body = await wait_for_answer(worker, "/pipeline/lag?scope=group",
                                 _has_offsets(topic, zero, COUNTS), "the held lag")
    assert body["total_lag"] == produced
    worker.kill()  # a clean stop would wait for the held batch; nothing of it is stored


async def test_lag_in_shared_topic_mode(private_broker: PrivateBroker, start_worker) -> None:
    """TOPIC_MODE=shared: the one topic ``device-data``, keyed by device, is what lags."""
    from streams.topics import SHARED_TOPIC, TopicProvisioner

    async with TopicProvisioner(private_broker.settings()) as topics:
        await topics.ensure([SHARED_TOPIC], partitions=4)
    devices = [f"websharedlag-{n}" for n in range(4)]  # one per partition (partition 1: none)
    for partition, device in enumerate(devices):
        await produce(private_broker, SHARED_TOPIC, device.encode(), {
            partition: [reading(device, i) for i in range(COUNTS[partition])]})
    worker = start_worker("web-lag-shared", TOPIC_MODE="shared", **private_broker.worker_env())
    report = await wait_for_answer(worker, "/pipeline/lag",
                                   _has_offsets(SHARED_TOPIC, COUNTS, COUNTS),
                                   "the shared topic fully committed")
    assert report["total_lag"] == 0
    assert {p["topic"] for p in report["partitions"]} == {SHARED_TOPIC}

"""``faust -A streams.app replay`` against a private Tansu broker and real workers: the
dry run's plan, the fallback when the broker's offsets-for-times answer is wrong, and the
refusal while a worker runs. The drill of a real restore followed by a replay is in
``tests/test_backup_restore.py``."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from producers.device_producer import DeviceProducer, ProducerConfig
from streams.topics import SHARED_TOPIC, TopicProvisioner, device_topic
from tests.stack import (
    PrivateBroker,
    commit_offsets,
    committed_offsets,
    fleet,
    rows_at_least,
    run_replay,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

METRICS = 2


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def plan_rows(output: str) -> dict[tuple[str, int], list[str]]:
    """The plan's table rows by (topic, partition): [committed, target, found by ..., action]."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[1].isdigit():
            rows[fields[0], int(fields[1])] = fields[2:]
    return rows


async def records(broker: PrivateBroker, topics: list[str]) -> list[Any]:
    """Every record of ``topics`` (read without a group)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=broker.address, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + 10
        idle_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < 1.5:
            batch = await consumer.getmany(timeout_ms=300)
            for messages in batch.values():
                found += messages
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return found


async def produce(broker: PrivateBroker, sends: list[tuple[int, bytes, int | None]],
                  topic: str) -> list[tuple[int, int]]:
    """Send (partition, value, timestamp_ms or None) in batches; (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.address, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, partition=partition, timestamp_ms=ts)
                   for partition, value, ts in sends]
        return [((meta := await f).partition, meta.offset) for f in futures]
    finally:
        await producer.stop()


async def test_dry_run_prints_the_plan_and_commits_nothing(private_broker: PrivateBroker) -> None:
    """Shared topic mode: two partitions of ``device-data``, consumed and committed to the
    end; a dry run since a time between two phases plans each back to its first phase-B
    record, and the committed offsets stay where they were."""
    group = unique("replay-dry-")
    async with TopicProvisioner(private_broker.settings()) as topics:
        await topics.ensure([SHARED_TOPIC], partitions=2)
    phase_a = await produce(private_broker, [(i % 2, b"a", None) for i in range(20)],
                            SHARED_TOPIC)
    await asyncio.sleep(1.0)
    since_ms = int(time.time() * 1000)
    await asyncio.sleep(1.0)
    phase_b = await produce(private_broker, [(i % 2, b"b", None) for i in range(10)],
                            SHARED_TOPIC)
    tps = [TopicPartition(SHARED_TOPIC, p) for p in (0, 1)]
    stamps = {(r.partition, r.offset): r.timestamp
              for r in await records(private_broker, [SHARED_TOPIC])}
    assert max(stamps[x] for x in phase_a) < since_ms <= min(stamps[x] for x in phase_b)
    ends = {tp: max(o for p, o in phase_b if p == tp.partition) + 1 for tp in tps}
    await commit_offsets(private_broker.address, group, ends)

    done = run_replay(iso_ms(since_ms), "--dry-run", APP_ID=group, TOPIC_MODE="shared",
                      **private_broker.worker_env())

    assert done.returncode == 0, done.stderr[-3000:]
    rows = plan_rows(done.stdout)
    assert set(rows) == {(SHARED_TOPIC, 0), (SHARED_TOPIC, 1)}, done.stdout
    for tp in tps:
        first_b = min(o for p, o in phase_b if p == tp.partition)
        assert rows[tp.topic, tp.partition][:4] == [
            str(ends[tp]), str(first_b), "offsets_for_times", "rewind"], done.stdout
    assert "dry run: nothing committed" in done.stdout
    assert await committed_offsets(private_broker.address, group, tps) == ends


async def test_wrong_answers_of_the_broker_fall_back_to_the_earliest_offset(
        private_broker: PrivateBroker) -> None:
    """Records whose own timestamps are older than their append time (a backfill, a slow
    producer): Tansu looks the time up by append time and answers offset 0. The plan never
    takes a wrong offset: it is the first record at or after the time, or the earliest
    retained offset with the reason."""
    device = unique("replay-old-")
    topic = device_topic(device)
    group = unique("replay-old-")
    async with TopicProvisioner(private_broker.settings()) as topics:
        await topics.ensure([topic], partitions=1)
    base = int(time.time() * 1000) - 600_000
    sends = [(0, b"x", base + i * 10_000) for i in range(30)]  # one batch, 10 s apart
    await produce(private_broker, sends, topic)
    tp = TopicPartition(topic, 0)
    await commit_offsets(private_broker.address, group, {tp: 30})
    since_ms = base + 125_000  # between records 12 and 13

    done = run_replay(iso_ms(since_ms), "--dry-run", APP_ID=group, DEVICE_FILTER=device,
                      **private_broker.worker_env())

    assert done.returncode == 0, done.stderr[-3000:]
    committed_now, target, found_by, *rest = plan_rows(done.stdout)[topic, 0]
    assert committed_now == "30"
    assert (target, found_by) in (("13", "offsets_for_times"), ("0", "earliest:")), done.stdout
    print(done.stdout)  # what the broker did, for the record (-s)


async def test_apply_is_refused_while_a_worker_is_in_the_group(
        private_broker: PrivateBroker, start_worker) -> None:
    devices, device_filter = fleet("replay-busy-", 1)
    group = unique("replay-busy-")
    await publish(private_broker, devices, start_ms=int(time.time() * 1000) - 3_600_000,
                  count=20)
    worker = start_worker("replay-busy", APP_ID=group, DEVICE_FILTER=device_filter,
                          **private_broker.worker_env())
    await wait_for(lambda: rows_at_least(devices, 20 * METRICS), 60, "the readings stored")
    tps = [TopicPartition(device_topic(devices[0]), p) for p in range(10)]

    async def all_committed() -> bool:
        offsets = await committed_offsets(private_broker.address, group, tps)
        return sum(o or 0 for o in offsets.values()) > 0
    await wait_for(all_committed, 30, "the worker's commit")
    before = await committed_offsets(private_broker.address, group, tps)

    done = run_replay(iso_ms(int(time.time() * 1000) - 7_200_000), APP_ID=group,
                      DEVICE_FILTER=device_filter, **private_broker.worker_env())

    assert done.returncode != 0, done.stdout
    assert f"consumer group {group} has state Stable, 1 member(s)" in done.stderr
    assert "Stop every worker of the group" in done.stderr
    assert await committed_offsets(private_broker.address, group, tps) == before
    assert worker.process is not None and worker.process.poll() is None


async def publish(broker: PrivateBroker, devices: list[str], start_ms: int, count: int,
                  step_ms: int = 250, repeat_every: int = 0,
                  first: dict[tuple[str, str, int], float] | None = None
                  ) -> dict[tuple[str, str, int], float]:
    """Publish ``count`` readings per device from ``start_ms``; every ``repeat_every``-th
    also repeats a reading of ``first`` with other (negative) values. The first value of
    each key sent."""
    sent: dict[tuple[str, str, int], float] = {}
    earlier = sorted(first or {})
    config = ProducerConfig.from_settings(broker.settings(), max_batch_readings=20)
    async with DeviceProducer(broker.settings(), config) as producer:
        for i in range(count):
            readings = []
            for n, device in enumerate(devices):
                metrics = {f"m{j}": float((i * 31 + j * 7 + n) % 1000) for j in range(METRICS)}
                readings.append({"device_id": device, "time": start_ms + i * step_ms,
                                 "metrics": metrics})
                sent.update(((device, m, start_ms + i * step_ms), v) for m, v in metrics.items())
            if repeat_every and i % repeat_every == 0 and earlier:
                device, _, moment = earlier[(i * 7) % len(earlier)]
                readings.append({"device_id": device, "time": moment,
                                 "metrics": {f"m{j}": -1.0 - i for j in range(METRICS)}})
            await producer.send_many(readings)
    return sent

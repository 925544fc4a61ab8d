"""End to end on the real local stack: raw Kafka messages in, exact rows and dead letters out.

The same scenario runs in both topic modes: ``per-device`` (topic ``device-data-{id}``) and
``shared`` (every device on ``device-data``, keyed by its id; the worker checks each
reading's device against the key as it checks it against the topic in per-device mode).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from streams.settings import TopicMode
from streams.topics import PUBLISHING_MODES, SHARED_TOPIC, device_topic
from tests.stack import (
    RawProducer,
    create_topics,
    db_connect,
    fleet,
    read_dead_letters,
    rows_at_least,
    wait_for,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class TopicLayout:
    """Where the scenario's messages go in one topic mode."""

    mode: TopicMode

    def topic(self, device: str) -> str:
        return SHARED_TOPIC if self.mode is TopicMode.SHARED else device_topic(device)

    async def create(self, devices: list[str], partitions: int | None = None) -> None:
        """Provision the devices' topics, as a producer would before publishing."""
        await create_topics(sorted({self.topic(d) for d in devices}),
                            partitions=None if self.mode is TopicMode.SHARED else partitions)


LAYOUTS = [TopicLayout(mode) for mode in PUBLISHING_MODES]  # both: tests/test_topic_move.py


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@dataclass
class Expectation:
    """What the pipeline must have stored and dead-lettered for the messages sent."""

    rows: dict[tuple[str, str, int], float] = field(default_factory=dict)
    dead: set[tuple[str, str, int, int | None]] = field(default_factory=set)

    def stored(self, device: str, moment: datetime, metrics: dict[str, Any]) -> None:
        for metric, value in metrics.items():
            self.rows.setdefault((device, metric, _us(moment)), float(value))

    def dead_letter(self, device: str, topic: str, offset: int, index: int | None = None) -> None:
        self.dead.add((device, topic, offset, index))


async def _send_device_mix(producer: RawProducer, layout: TopicLayout, device: str,
                           expect: Expectation) -> None:
    """One device's messages: valid, invalid, duplicated, conflicting, out of order."""
    topic = layout.topic(device)
    key = device.encode()
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
    t1, t2, t0 = now, now + timedelta(milliseconds=250), now - timedelta(seconds=30)

    async def send(value: Any) -> int:
        return (await producer.send(topic, key, value))[1]

    first = {"device_id": device, "time": _iso(t1), "metrics": {"temperature": 21.5, "humidity": 40}}
    await send(first)
    expect.stored(device, t1, first["metrics"])

    offset = await send([
        {"device_id": device, "time": _iso(t2), "metrics": {"temperature": 21.7}},
        {"device_id": device, "time": _iso(t2), "metrics": {"temperature": "hot"}},
        {"device_id": device, "time": _iso(t0), "metrics": {"temperature": 19.0}},  # out of order
    ])
    expect.stored(device, t2, {"temperature": 21.7})
    expect.dead_letter(device, topic, offset, 1)
    expect.stored(device, t0, {"temperature": 19.0})

    await send(first)  # exact duplicate: stored once
    conflicting = {"device_id": device, "time": _iso(t1),
                   "metrics": {"temperature": 99.0, "pressure": 1013.25}}
    await send(conflicting)  # temperature keeps the first value; pressure is new
    expect.stored(device, t1, conflicting["metrics"])

    epoch_ms = int((now + timedelta(seconds=1)).timestamp() * 1000)
    await send({"device_id": device, "time": epoch_ms, "metrics": {"door_open": True, "fan": False}})
    expect.stored(device, now + timedelta(seconds=1), {"door_open": 1.0, "fan": 0.0})

    for bad in (
        b'{"device_id": "' + key + b'", "time": ',  # truncated JSON
        # wrong device for the topic (per-device) or for the key (shared)
        {"device_id": device + "-other", "time": _iso(t1), "metrics": {"x": 1}},
        {"device_id": device, "time": _iso(now + timedelta(hours=1)), "metrics": {"x": 1}},
        {"device_id": device, "time": _iso(now - timedelta(days=400)), "metrics": {"x": 1}},
        [],
        42,
        {"device_id": device, "time": "2026-11-28T17:00:00", "metrics": {"x": 1}},  # no zone
    ):
        expect.dead_letter(device, topic, await send(bad))
    offset = await send([{"device_id": device, "metrics": {"x": 1}}, 7])
    expect.dead_letter(device, topic, offset, 0)
    expect.dead_letter(device, topic, offset, 1)


async def _stored_rows(devices: list[str]) -> dict[tuple[str, str, int], float]:
    conn = await db_connect()
    try:
        rows = await conn.fetch(
            "SELECT device_id, metric, time, value FROM readings WHERE device_id = ANY($1)",
            devices)
    finally:
        await conn.close()
    found: dict[tuple[str, str, int], float] = {}
    for row in rows:
        key = (row["device_id"], row["metric"], _us(row["time"]))
        assert key not in found, f"duplicate row {key}"
        found[key] = row["value"]
    return found


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.mode.value)
async def test_readings_land_exactly_once_and_invalid_ones_are_dead_lettered(
    start_worker, layout: TopicLayout,
) -> None:
    devices, only = fleet("e2e-", 5)
    early, late = devices[:3], devices[3:]
    expect = Expectation()
    await layout.create(early)
    async with RawProducer() as producer:
        for device in early:
            await _send_device_mix(producer, layout, device, expect)
        worker = start_worker(f"e2e-{layout.mode.value}", DEVICE_FILTER=only,
                              TOPIC_MODE=layout.mode.value)
        await wait_for(lambda: rows_at_least(early, 1), 90, "the worker to store the first rows")
        # Devices that appear after the worker started are picked up while it runs (their
        # topics are created now, with 4 partitions as auto-created ones get, per-device).
        await layout.create(late, partitions=4)
        for device in late:
            await _send_device_mix(producer, layout, device, expect)

    devices = early + late
    await wait_for(lambda: rows_at_least(devices, len(expect.rows)), 60,
                   f"{len(expect.rows)} rows")
    assert await _stored_rows(devices) == expect.rows

    topics = {layout.topic(d) for d in devices}
    # device-data holds every shared-mode run's devices: only this run's keys
    letters = await read_dead_letters(topics, len(expect.dead),
                                      keys={d.encode() for d in devices})
    seen = [(r["_key"].decode(), r["topic"], r["offset"], r.get("index")) for r in letters]
    assert sorted(seen, key=str) == sorted(expect.dead, key=str), "one dead letter per invalid reading"
    for record in letters:
        assert record["error"] and isinstance(record["raw"], str)
        assert isinstance(record["partition"], int)
        if layout.mode is TopicMode.PER_DEVICE:
            assert record["_key"] == record["topic"].removeprefix("device-data-").encode()
        else:
            assert record["topic"] == SHARED_TOPIC

    conn = await db_connect()
    try:
        devices_rows = await conn.fetch(
            "SELECT d.device_id, d.first_seen = min(r.time) AS first_ok, "
            "d.last_seen = max(r.time) AS last_ok FROM devices d JOIN readings r USING (device_id) "
            "WHERE d.device_id = ANY($1) GROUP BY d.device_id, d.first_seen, d.last_seen", devices)
    finally:
        await conn.close()
    assert sorted(r["device_id"] for r in devices_rows) == sorted(devices)
    assert all(r["first_ok"] and r["last_ok"] for r in devices_rows)
    assert "Traceback" not in worker.log_text()
    if layout.mode is TopicMode.SHARED:
        # device-data was in the first subscription: one group join, no rebalance after it
        assert worker.log_text().count("Joined group") == 1

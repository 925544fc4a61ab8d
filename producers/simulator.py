"""A simulated fleet: devices reporting random-walk metrics at a steady rate.

It publishes through ``DeviceProducer`` (validation, batching, compression, topic
provisioning and backpressure included), or posts to a worker's ``POST /ingest`` through
``IngestClient``, each device with its own token.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol


class ReadingSender(Protocol):
    """Where the fleet's readings go: a ``DeviceProducer`` or an ``IngestClient``."""

    async def send_many(self, readings: list[dict[str, object]]) -> Any: ...

    async def flush(self) -> Any: ...


@dataclass(frozen=True)
class FleetConfig:
    """What the simulated fleet sends."""

    devices: int = 10
    metrics: int = 5
    rate: float = 1000.0  # readings per second over the whole fleet; 0 = as fast as possible
    duration: float = 0.0  # seconds; 0 = no time limit
    count: int = 0  # readings in all; 0 = no count limit
    prefix: str = "sim-"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.devices < 1 or self.metrics < 1 or self.metrics > 1000:
            raise ValueError("devices must be >= 1 and metrics between 1 and 1000")
        if self.rate < 0 or self.duration < 0 or self.count < 0:
            raise ValueError("rate, duration and count must not be negative")


@dataclass
class Progress:
    """Counts so far, for progress lines and the final summary."""

    readings: int = 0
    points: int = 0
    started: float = 0.0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (f"{self.readings} readings, {self.points} points in {elapsed:.1f}s "
                f"({self.points / elapsed:,.0f} points/s)")


class Fleet:
    """Generates readings; each device keeps its own strictly increasing clock."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._random = random.Random(config.seed)
        self.device_ids = [f"{config.prefix}{i:05d}" for i in range(config.devices)]
        self._names = [f"metric_{j}" for j in range(config.metrics)]
        self._values = {d: [self._random.uniform(0, 100) for _ in self._names]
                        for d in self.device_ids}
        self._last_ms = dict.fromkeys(self.device_ids, 0)
        self._next = 0

    def next_reading(self) -> dict[str, object]:
        device = self.device_ids[self._next % len(self.device_ids)]
        self._next += 1
        stamp = max(int(time.time() * 1000), self._last_ms[device] + 1)
        self._last_ms[device] = stamp
        values = self._values[device]
        for i in range(len(values)):
            values[i] += self._random.gauss(0, 1)
        return {"device_id": device, "time": stamp,
                "metrics": {name: round(v, 3) for name, v in zip(self._names, values)}}


async def run_fleet(
    producer: ReadingSender,
    config: FleetConfig,
    report: Callable[[Progress], None],
    report_every: float = 1.0,
) -> Progress:
    """Send readings until the duration or count is reached; flush; return the totals."""
    fleet = Fleet(config)
    progress = Progress(started=time.monotonic())
    deadline = progress.started + config.duration if config.duration else None
    next_report = progress.started + report_every
    tick = 0.01
    while True:
        now = time.monotonic()
        if deadline and now >= deadline:
            break
        due = (int((now - progress.started) * config.rate) - progress.readings
               if config.rate else 1000)
        if config.count:
            due = min(due, config.count - progress.readings)
            if due <= 0 and progress.readings >= config.count:
                break
        if due > 0:
            await producer.send_many([fleet.next_reading() for _ in range(due)])
            progress.readings += due
            progress.points += due * config.metrics
        if now >= next_report:
            report(progress)
            next_report = now + report_every
        if config.rate:
            await asyncio.sleep(tick)
    await producer.flush()
    report(progress)
    return progress

"""A simulated fleet: devices reporting random-walk metrics at a steady rate.

It publishes through ``DeviceProducer`` (validation, batching, compression, topic
provisioning and backpressure included), or posts to a worker's ``POST /ingest`` through
``IngestClient``, each device with its own token.
"""
from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol, overload

import numpy as np


# Readings generated and handed over in one send_many call, at most: a fleet running behind
# its rate (a slow broker) catches up in calls of this size, not in one list of everything due.
MAX_CALL_READINGS = 10_000


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


class DeviceIds(Sequence[str]):
    """The fleet's device ids, ``f"{prefix}{index:05d}"``, made from the index when asked for
    (a million-device fleet keeps no million strings)."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix = prefix
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [f"{self.prefix}{i:05d}" for i in range(*index.indices(self._count))]
        i = operator.index(index)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError("device index out of range")
        return f"{self.prefix}{i:05d}"


class Fleet:
    """Generates readings, round-robin over the devices; each device keeps its own strictly
    increasing clock and a random walk per metric (uniform(0, 100) start, gauss(0, 1) steps,
    sent rounded to 3 decimals).

    Per device it keeps only ``8 * (metrics + 1)`` bytes: the walks' values in one float64
    array of shape (devices, metrics) and the last times in one int64 array; ids are made
    from the index. Readings are generated in blocks of consecutive devices, vectorised.
    The same ``seed`` gives the same ids and values, however the readings are asked for.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        # numpy takes no negative seed; --seed takes any int, seeded as its absolute value
        # (as random.Random seeds).
        seed = None if config.seed is None else abs(config.seed)
        self._random = np.random.default_rng(seed)
        self.device_ids = DeviceIds(config.prefix, config.devices)
        self._names = tuple(f"metric_{j}" for j in range(config.metrics))
        self._values = self._random.uniform(0, 100, (config.devices, config.metrics))
        self._last_ms = np.zeros(config.devices, dtype=np.int64)
        self._next = 0  # readings generated so far

    @property
    def nbytes(self) -> int:
        """Bytes the fleet's per-device state takes (its two arrays)."""
        return int(self._values.nbytes + self._last_ms.nbytes)

    def next_reading(self) -> dict[str, object]:
        return self.next_readings(1)[0]

    def next_readings(self, count: int) -> list[dict[str, object]]:
        """The next ``count`` readings, in the order ``next_reading()`` would give them."""
        out: list[dict[str, object]] = []
        devices = self.config.devices
        while len(out) < count:
            first = self._next % devices
            left = count - len(out)
            if first or left < devices:  # up to the last device (a block never wraps)
                block, passes = min(left, devices - first), 1
            else:  # whole rounds over a fleet smaller than the call, together
                block, passes = devices, left // devices
            self._extend(out, first, block, passes)
            self._next += block * passes
        return out

    def _extend(self, out: list[dict[str, object]], first: int, block: int,
                passes: int) -> None:
        """Readings of devices ``first .. first + block - 1``, ``passes`` rounds of them."""
        end = first + block
        # walk[0]: the values now; walk[p]: after the p-th step. cumsum adds the steps one
        # after the other, as one reading at a time would (the same floats, bit for bit).
        walk = np.empty((passes + 1, block, self.config.metrics))
        walk[0] = self._values[first:end]
        self._random.standard_normal(out=walk[1:])
        np.cumsum(walk, axis=0, out=walk)
        self._values[first:end] = walk[-1]
        # Each device's clock: the time now, or 1 ms after its last reading if that is later.
        last = self._last_ms[first:end]
        start = np.maximum(last + 1, int(time.time() * 1000))
        last[:] = start + (passes - 1)
        stamps = (start + np.arange(passes)[:, None]).ravel().tolist()
        rows = np.round(walk[1:], 3).reshape(passes * block, -1).tolist()
        prefix, names = self.config.prefix, self._names
        ids = [f"{prefix}{index:05d}" for index in range(first, end)] * passes
        out.extend({"device_id": device, "time": stamp, "metrics": dict(zip(names, row))}
                   for device, stamp, row in zip(ids, stamps, rows))


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
        while due > 0:  # in calls of at most MAX_CALL_READINGS, however far behind
            batch = fleet.next_readings(min(due, MAX_CALL_READINGS))
            await producer.send_many(batch)
            due -= len(batch)
            progress.readings += len(batch)
            progress.points += len(batch) * config.metrics
        if now >= next_report:
            report(progress)
            next_report = now + report_every
        if config.rate:
            await asyncio.sleep(tick)
    await producer.flush()
    report(progress)
    return progress

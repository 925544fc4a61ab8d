"""The series a sink has written: each one's id, device and newest stored time, by slot.

A slot is a small dense index given to each (device, metric) the sink meets; its series id
and its mark live in numpy arrays at that index, so a batch's ids and marks are read with
one array lookup per batch instead of one dict lookup per point.

The mark is what the sink believes to be an upper bound of the series' stored times. It is
only a hint: the sink writes a point straight into the hypertable when the point is newer
than its mark, and the unique index on (series_id, time) still refuses any point already
there (another writer's, a replay's), in which case the sink writes the batch the checked
way. A mark too low costs a retry, a mark too high a slower path, never a wrong row.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

UNKNOWN = np.iinfo(np.int64).max  # no point is newer: nothing takes the fast path
NOTHING_STORED = np.iinfo(np.int64).min  # every point is newer

Pair = tuple[str, str]  # (device_id, metric)
Point = tuple[int, str, str, float]  # (time_us, device_id, metric, value), as sinks.timescale


class SeriesCache:
    """At most ``capacity`` series; past that it starts over (ids are read again)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.generation = 0
        self.clear()

    def clear(self) -> None:
        """Forget every series; slots handed out before belong to an older generation."""
        self.generation += 1
        self._slot: dict[Pair, int] = {}
        self._devices: list[str] = []
        self.ids = np.empty(64, np.int32)
        self.marks = np.empty(64, np.int64)

    def __len__(self) -> int:
        return len(self._devices)

    def slots(self, points: Sequence[Point]) -> np.ndarray:
        """The slot of each point's series; KeyError if one is not cached."""
        slot = self._slot
        return np.array([slot[p[1], p[2]] for p in points], np.int64)

    def missing(self, points: Sequence[Point]) -> set[Pair]:
        """The series of ``points`` not cached; when caching them would overflow the cache,
        it starts over and all of them are."""
        wanted = {(p[1], p[2]) for p in points}
        missing = {pair for pair in wanted if pair not in self._slot}
        if len(self) + len(missing) > self.capacity:
            self.clear()
            return wanted
        return missing

    def add(self, series: Iterable[tuple[str, str, int]]) -> None:
        """Cache (device_id, metric, series_id) triples, their marks unknown."""
        for device, metric, series_id in series:
            if (device, metric) in self._slot:
                continue
            slot = len(self._devices)
            if slot == len(self.ids):
                self.ids = np.resize(self.ids, 2 * slot)
                self.marks = np.resize(self.marks, 2 * slot)
            self._slot[device, metric] = slot
            self._devices.append(device)
            self.ids[slot] = series_id
            self.marks[slot] = UNKNOWN

    def devices_of(self, slots: np.ndarray) -> list[str]:
        """The device of each slot."""
        devices = self._devices
        return [devices[slot] for slot in slots.tolist()]

    def seed(self, slots: np.ndarray, newest_us: dict[str, int]) -> None:
        """Set the marks of ``slots`` from their devices' newest stored times (a device
        missing from ``newest_us`` has nothing stored)."""
        devices, marks = self._devices, self.marks
        for slot in slots.tolist():
            marks[slot] = newest_us.get(devices[slot], NOTHING_STORED)

    def learn(self, generation: int, slots: np.ndarray, time_us: np.ndarray) -> None:
        """Points at these slots (of ``generation``) and times are now stored."""
        if generation == self.generation:
            np.maximum.at(self.marks, slots, time_us)

    def forget(self, generation: int, slots: np.ndarray) -> None:
        """Marks of these slots (of ``generation``) may be too low: read them again."""
        if generation == self.generation:
            self.marks[slots] = UNKNOWN

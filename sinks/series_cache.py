"""The series a sink has written: each one's id, device and newest stored time, by slot.

A slot is a small dense index given to each (device, metric) the sink meets; its series id
and its mark live in numpy arrays at that index, so a batch's ids and marks are read with
one array lookup per batch instead of one dict lookup per point.

The mark is what the sink believes to be an upper bound of the series' stored times. It is
only a hint: the sink writes a point straight into the hypertable when the point is newer
than its mark, and the unique index on (series_id, time) still refuses any point already
there (another writer's, a replay's), in which case the sink writes the batch the checked
way. A mark too low costs a retry, a mark too high a slower path, never a wrong row.

Compact by design: each device id and metric name is held once, interned to a row and a
column; a series' slot is found in a dense int32 table by (row, column) for the first
``DENSE_METRICS`` metric names met, and in an open-addressing int64 -> int32 hash table
(numpy, at most half full) for the others, so a large vocabulary of rare metrics costs
bytes per series, not per device and metric. The cache is bounded by an estimate of its
bytes (``nbytes``: its arrays as allocated, plus ``DEVICE_BYTES`` / ``METRIC_BYTES`` and
the characters of each id and name); ``missing`` starts it over (``resets``) only when
caching a batch's new series would take the estimate past ``max_bytes``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

UNKNOWN = np.iinfo(np.int64).max  # no point is newer: nothing takes the fast path
NOTHING_STORED = np.iinfo(np.int64).min  # every point is newer

Pair = tuple[str, str]  # (device_id, metric)
Point = tuple[int, str, str, float]  # (time_us, device_id, metric, value), as sinks.timescale

DENSE_METRICS = 16  # metric names given a column of the dense table, in the order met
# Python objects per interned device id or metric name, beyond its characters: the str's
# header, its dict entry (at the dict's fullest), its int index and a list pointer.
DEVICE_BYTES = METRIC_BYTES = 150
_SLOT_BYTES = 4 + 8 + 4  # ids, marks, device row
_MIN = 64  # first size of the arrays, which then double


def _capacity(n: int) -> int:
    """The length of an array grown by doubling from ``_MIN`` to hold ``n`` items."""
    return max(_MIN, 1 << max(n - 1, 0).bit_length())


def _table_size(n: int) -> int:
    """The length of a hash table holding ``n`` keys (at most half full; 0 when empty)."""
    return _capacity(2 * n) if n else 0


class _PairTable:
    """int64 keys (never negative) -> int32 values: open addressing, linear probing."""

    def __init__(self) -> None:
        self.count = 0
        self.keys = np.empty(0, np.int64)
        self.values = np.empty(0, np.int32)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def _home(self, keys: np.ndarray) -> np.ndarray:
        bits = np.uint64(64 - (len(self.keys) - 1).bit_length())
        mixed = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps
        return (mixed >> bits).astype(np.intp)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key; -1 where absent."""
        out = np.full(len(keys), -1, np.int64)
        if not self.count or not len(keys):
            return out
        mask = len(self.keys) - 1
        todo, pos = np.arange(len(keys)), self._home(keys)
        while len(todo):
            at = self.keys[pos]
            hit = at == keys
            out[todo[hit]] = self.values[pos[hit]]
            more = ~hit & (at >= 0)
            todo, keys, pos = todo[more], keys[more], (pos[more] + 1) & mask
        return out

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add ``keys`` (distinct, none present) with their values."""
        size = _table_size(self.count + len(keys))
        if size > len(self.keys):
            old = self.keys >= 0
            old_keys, old_values = self.keys[old], self.values[old]
            self.keys = np.full(size, -1, np.int64)
            self.values = np.empty(size, np.int32)
            self._place(old_keys, old_values)
        self._place(keys, values)
        self.count += len(keys)

    def _place(self, keys: np.ndarray, values: np.ndarray) -> None:
        mask = len(self.keys) - 1
        pos = self._home(keys)
        while len(keys):
            free = np.flatnonzero(self.keys[pos] < 0)
            _, first = np.unique(pos[free], return_index=True)
            won = free[first]  # one key per free position
            self.keys[pos[won]] = keys[won]
            self.values[pos[won]] = values[won]
            left = np.ones(len(keys), bool)
            left[won] = False
            keys, values, pos = keys[left], values[left], (pos[left] + 1) & mask


class SeriesCache:
    """Series cached within an estimate of ``max_bytes``; past that it starts over (ids
    are read again)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.generation = 0
        self.resets = 0  # times ``missing`` started over to stay within ``max_bytes``
        self.clear()

    def clear(self) -> None:
        """Forget every series; slots handed out before belong to an older generation."""
        self.generation += 1
        self._row: dict[str, int] = {}  # device id -> row
        self._devices: list[str] = []  # by row
        self._column: dict[str, int] = {}  # metric -> column
        self._chars = 0  # of the device ids and metric names
        self._dense = np.full((_MIN, 0), -1, np.int32)  # slot by (row, column); -1: none
        self._sparse = _PairTable()  # slot by row << 32 | column, columns >= DENSE_METRICS
        self._count = 0
        self.ids = np.empty(_MIN, np.int32)
        self.marks = np.empty(_MIN, np.int64)
        self._device_row = np.empty(_MIN, np.int32)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """The estimate of the cache's bytes that ``max_bytes`` bounds."""
        return (self.ids.nbytes + self.marks.nbytes + self._device_row.nbytes
                + self._dense.nbytes + self._sparse.nbytes + self._chars
                + DEVICE_BYTES * len(self._row) + METRIC_BYTES * len(self._column))

    def slots(self, points: Sequence[Point]) -> np.ndarray:
        """The slot of each point's series; KeyError if one is not cached."""
        row, column = self._row, self._column
        count = len(points)
        rows = np.fromiter([row[p[1]] for p in points], np.int64, count)
        columns = np.fromiter([column[p[2]] for p in points], np.int64, count)
        slots = self._find(rows, columns)
        if count and slots.min() < 0:
            at = int(np.argmax(slots < 0))
            raise KeyError((points[at][1], points[at][2]))
        return slots

    def _find(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The slot of each (row, column) known; -1 where none."""
        width = self._dense.shape[1]
        if not len(columns) or columns.max() < width:
            return self._dense[rows, columns].astype(np.int64)
        slots = np.empty(len(rows), np.int64)
        dense = columns < width
        slots[dense] = self._dense[rows[dense], columns[dense]]
        sparse = ~dense
        slots[sparse] = self._sparse.get(rows[sparse] << 32 | columns[sparse])
        return slots

    def missing(self, points: Sequence[Point]) -> set[Pair]:
        """The series of ``points`` not cached; when caching them would take the cache past
        ``max_bytes``, it starts over and all of them are."""
        wanted = {(p[1], p[2]) for p in points}
        pairs = list(wanted)
        row, column = self._row, self._column
        rows = np.fromiter([row.get(d, -1) for d, _ in pairs], np.int64, len(pairs))
        columns = np.fromiter([column.get(m, -1) for _, m in pairs], np.int64, len(pairs))
        known = (rows >= 0) & (columns >= 0)
        slots = np.full(len(pairs), -1, np.int64)
        slots[known] = self._find(rows[known], columns[known])
        missing = {pair for pair, slot in zip(pairs, slots.tolist()) if slot < 0}
        if missing and self._bytes_with(missing) > self.max_bytes:
            self.clear()
            self.resets += 1
            return wanted
        return missing

    def _bytes_with(self, pairs: set[Pair]) -> int:
        """An upper bound of ``nbytes`` once ``pairs`` (not cached) are."""
        new_devices = {d for d, _ in pairs if d not in self._row}
        new_metrics = {m for _, m in pairs if m not in self._column}
        devices = len(self._row) + len(new_devices)
        metrics = len(self._column) + len(new_metrics)
        crowded = metrics > DENSE_METRICS
        sparse = self._sparse.count + sum(
            1 for _, m in pairs
            if (m in new_metrics and crowded) or self._column.get(m, 0) >= DENSE_METRICS)
        return (_SLOT_BYTES * _capacity(self._count + len(pairs))
                + 4 * max(_capacity(devices), len(self._dense)) * min(metrics, DENSE_METRICS)
                + 12 * _table_size(sparse)
                + self._chars + sum(map(len, new_devices)) + sum(map(len, new_metrics))
                + DEVICE_BYTES * devices + METRIC_BYTES * metrics)

    def add(self, series: Iterable[tuple[str, str, int]]) -> None:
        """Cache (device_id, metric, series_id) triples, their marks unknown."""
        row, devices, column = self._row, self._devices, self._column
        rows, columns, ids = [], [], []
        for device, metric, series_id in series:
            r = row.get(device)
            if r is None:
                r = row[device] = len(devices)
                devices.append(device)
                self._chars += len(device)
            c = column.get(metric)
            if c is None:
                c = column[metric] = len(column)
                self._chars += len(metric)
            rows.append(r)
            columns.append(c)
            ids.append(series_id)
        if not ids:
            return
        self._grow_dense()
        r_, c_ = np.array(rows, np.int64), np.array(columns, np.int64)
        keys = r_ << 32 | c_
        # Each new series once, in the order given.
        _, first = np.unique(keys, return_index=True)
        first.sort()
        first = first[self._find(r_[first], c_[first]) < 0]
        if not len(first):
            return
        start, end = self._count, self._count + len(first)
        self._grow_slots(end)
        new = np.arange(start, end)
        r_, c_ = r_[first], c_[first]
        self.ids[start:end] = np.array(ids, np.int64)[first]
        self.marks[start:end] = UNKNOWN
        self._device_row[start:end] = r_
        dense = c_ < DENSE_METRICS
        self._dense[r_[dense], c_[dense]] = new[dense]
        if not dense.all():
            self._sparse.put(keys[first][~dense], new[~dense].astype(np.int32))
        self._count = end

    def _grow_dense(self) -> None:
        rows, width = len(self._row), min(len(self._column), DENSE_METRICS)
        height = max(_capacity(rows), len(self._dense))
        if (height, width) != self._dense.shape:
            grown = np.full((height, width), -1, np.int32)
            grown[:len(self._dense), :self._dense.shape[1]] = self._dense
            self._dense = grown

    def _grow_slots(self, count: int) -> None:
        size = _capacity(count)
        if size > len(self.ids):
            self.ids = np.resize(self.ids, size)
            self.marks = np.resize(self.marks, size)
            self._device_row = np.resize(self._device_row, size)

    def devices_of(self, slots: np.ndarray) -> list[str]:
        """The device of each slot."""
        devices = self._devices
        return [devices[row] for row in self._device_row[slots].tolist()]

    def seed(self, slots: np.ndarray, newest_us: dict[str, int]) -> None:
        """Set the marks of ``slots`` from their devices' newest stored times (a device
        missing from ``newest_us`` has nothing stored)."""
        get = newest_us.get
        self.marks[slots] = np.array(
            [get(device, NOTHING_STORED) for device in self.devices_of(slots)], np.int64)

    def learn(self, generation: int, slots: np.ndarray, time_us: np.ndarray) -> None:
        """Points at these slots (of ``generation``) and times are now stored."""
        if generation == self.generation:
            np.maximum.at(self.marks, slots, time_us)

    def forget(self, generation: int, slots: np.ndarray) -> None:
        """Marks of these slots (of ``generation``) may be too low: read them again."""
        if generation == self.generation:
            self.marks[slots] = UNKNOWN

"""A batch's points grouped in the worker with numpy: the first of each key, and the
count, sum, min and max of each (series, time bucket).

The sink's fast path uses these to send the aggregates' rows (a few per series) instead of
having PostgreSQL group the inserted points. Every function takes columns of the same
length, one entry per point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def first_of_each_key(series: np.ndarray, time_us: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` (indexes into the columns, in arrival order) sorted by (series, time),
    keeping of each (series, time) only the first to arrive."""
    if not len(rows):
        return rows
    # lexsort is stable: among equal keys, arrival order stays.
    rows = rows[np.lexsort((time_us[rows], series[rows]))]
    sorted_series, sorted_time = series[rows], time_us[rows]
    first = np.ones(len(rows), bool)
    first[1:] = (sorted_series[1:] != sorted_series[:-1]) | (sorted_time[1:] != sorted_time[:-1])
    return rows[first]


def runs(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and last index of each run of equal keys in sorted, non-empty ``keys``."""
    change = np.zeros(len(keys[0]), bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    return starts, np.append(starts[1:], len(change)) - 1


@dataclass(frozen=True, slots=True)
class Folded:
    """One row per (series, bucket), sorted by both."""

    bucket: np.ndarray  # int64, microseconds since the epoch
    series: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    first: np.ndarray  # index of each row's first point among the points folded

    def refold(self, bucket: np.ndarray) -> Folded:
        """These rows folded into coarser buckets (``bucket``: each row's coarser bucket,
        aligned so that the rows' order stays sorted)."""
        starts, _ = runs(self.series, bucket)
        return Folded(bucket[starts], self.series[starts], np.add.reduceat(self.count, starts),
                      np.add.reduceat(self.sum, starts), np.minimum.reduceat(self.min, starts),
                      np.maximum.reduceat(self.max, starts), self.first[starts])

    def take(self, mask: np.ndarray) -> Folded:
        """The rows where ``mask`` is true, in order."""
        return Folded(self.bucket[mask], self.series[mask], self.count[mask], self.sum[mask],
                      self.min[mask], self.max[mask], self.first[mask])

    def arguments(self) -> list[list]:
        """The columns as lists: (bucket, series, count, sum, min, max)."""
        return [self.bucket.tolist(), self.series.tolist(), self.count.tolist(),
                self.sum.tolist(), self.min.tolist(), self.max.tolist()]


def fold(series: np.ndarray, bucket: np.ndarray, value: np.ndarray) -> Folded:
    """Count, sum, min and max of ``value`` per (series, bucket); the points must be sorted
    by series, then bucket."""
    starts, _ = runs(series, bucket)
    count = np.diff(np.append(starts, len(series)))
    return Folded(bucket[starts], series[starts], count, np.add.reduceat(value, starts),
                  np.minimum.reduceat(value, starts), np.maximum.reduceat(value, starts), starts)

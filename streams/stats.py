"""Counters of one worker's pipeline: totals since start and rates over a sliding window.

The ingest pipeline bumps plain integers (cheap on the hot path); ``rates`` derives rates
from the samples ``sample`` takes once a second, so a web request never does more than read
them.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from sinks.timescale import CacheState, WriteResult

RATE_WINDOW_SECONDS = 10.0
_LATENCY_SAMPLES = 1024
# Upper bounds (seconds) of the freshness histogram's buckets: from live data (under a
# second) to backfills (days).
FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                     21600.0, 86400.0)
SINK_PHASES = ("resolve", "copy", "merge")  # WriteResult's *_seconds, in that order


@dataclass
class Histogram:
    """Cumulative-ready bucket counts, sum and count, as Prometheus histograms keep them."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, the last one is +Inf
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (the largest bound for
        the overflow bucket); None before any observation."""
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for bound, count in zip(self.bounds, self.counts):
            seen += count
            if seen >= rank:
                return bound
        return self.bounds[-1]


@dataclass
class PipelineStats:
    """Totals since the worker started, and the samples its rates come from."""

    messages_total: int = 0
    points_total: int = 0
    rows_written_total: int = 0
    dead_letters_total: int = 0
    late_readings_total: int = 0
    batches_total: int = 0
    checked_points_total: int = 0  # points the sink wrote the checked way (sinks.timescale)
    fast_path_fallbacks_total: int = 0  # batches whose fast path met stored keys
    series_cache: CacheState = field(default_factory=lambda: CacheState(0, 0, 0))
    # Seconds the sink spent per phase of its writes (sinks.timescale.WriteResult).
    sink_phase_seconds_total: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(SINK_PHASES, 0.0))
    last_batch_points: int = 0
    retries_total: int = 0
    db_available: bool = True
    started: float = field(default_factory=time.monotonic)
    # Seconds from a device's newest reading in a batch to the batch being durable.
    freshness: Histogram = field(default_factory=lambda: Histogram(FRESHNESS_BUCKETS))
    _write_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))
    _samples: deque[tuple[float, tuple[int, int, int, int]]] = field(default_factory=deque)
    # Connection pools whose usage /pipeline/db and /metrics show, by name (asyncpg pools).
    db_pools: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Counting starts at zero when the worker starts: work done before the first
        # timed sample still shows in the rates of the first window.
        self._samples.append((self.started, (0, 0, 0, 0)))

    def register_pool(self, name: str, pool: Any) -> None:
        """Show the usage of ``pool`` (an asyncpg pool) in the stats views as ``name``."""
        self.db_pools[name] = pool

    def unregister_pool(self, name: str) -> None:
        self.db_pools.pop(name, None)

    def record_batch(self, result: WriteResult, seconds: float) -> None:
        """One batch became durable in ``seconds``."""
        self.batches_total += 1
        self.last_batch_points = result.points
        self.rows_written_total += result.inserted
        self.checked_points_total += result.checked
        self.fast_path_fallbacks_total += result.fallbacks
        phases = self.sink_phase_seconds_total
        phases["resolve"] += result.resolve_seconds
        phases["copy"] += result.copy_seconds
        phases["merge"] += result.merge_seconds
        self._write_seconds.append(seconds)

    def record_freshness(self, newest_us: Iterable[int], durable_us: int) -> None:
        """One observation per device of a durable batch: its newest reading's age."""
        observe = self.freshness.observe
        for time_us in newest_us:
            observe(max(durable_us - time_us, 0) / 1e6)

    def write_latency(self, quantile: float) -> float | None:
        """The given quantile of recent batch write times, in seconds."""
        if not self._write_seconds:
            return None
        ordered = sorted(self._write_seconds)
        return ordered[min(int(quantile * len(ordered)), len(ordered) - 1)]

    def sample(self, now: float | None = None) -> None:
        """Remember the totals now; called about once a second."""
        now = time.monotonic() if now is None else now
        totals = (self.messages_total, self.points_total, self.rows_written_total,
                  self.dead_letters_total)
        self._samples.append((now, totals))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
            self._samples.popleft()

    def rates(self) -> tuple[float, float, float, float]:
        """Messages, points, rows and dead letters per second over the sampled window."""
        if len(self._samples) < 2:
            return (0.0, 0.0, 0.0, 0.0)
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        span = max(t1 - t0, 1e-9)
        messages, points, rows, dead_letters = ((b - a) / span for a, b in zip(first, last))
        return (messages, points, rows, dead_letters)

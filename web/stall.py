"""The stall watchdog's rule: which of this worker's partitions have stopped moving.

A partition is stalled when, over ``stall_seconds`` of lag samples, it has had lag (the
log's end past the committed offset), its committed offset has not moved, this worker
has owned it and the database has been up. A database outage is not a stall: the worker
retries and nothing it could do would help; the clocks start again when it is back.
Times are the samples' own, so a lag sample that stops being refreshed (the broker is
unreachable) can never make a partition look stalled.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiokafka.structs import TopicPartition

from web.lag import LagSample


@dataclass(frozen=True)
class _Watch:
    committed: int | None
    since: float  # sample time from which the committed offset stood still with lag


class StallWatchdog:
    """Feed it every lag sample; it tells the stalled partitions."""

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.stalled: list[TopicPartition] = []
        self.stalls_total = 0  # partitions that became stalled
        self.stalled_since: float | None = None  # sample time the current stall was found
        self._watches: dict[TopicPartition, _Watch] = {}
        self._last_sample_at: float | None = None

    def observe(self, sample: LagSample, database_up: bool) -> list[TopicPartition]:
        """Update from ``sample`` (seen before: nothing changes); return the stalled ones."""
        at = sample.taken_at
        if at == self._last_sample_at:
            return self.stalled
        self._last_sample_at = at
        watches: dict[TopicPartition, _Watch] = {}
        for row in (sample.own() if sample.assignment_known else ()):
            tp = TopicPartition(row.topic, row.partition)
            watch = self._watches.get(tp)
            if (watch is None or not database_up or (row.lag or 0) <= 0
                    or watch.committed != row.committed):
                watch = _Watch(row.committed, at)  # moving (or new): watched from now
            watches[tp] = watch
        self._watches = watches
        stalled = sorted(tp for tp, watch in watches.items()
                         if at - watch.since >= self.stall_seconds)
        self.stalls_total += len(set(stalled) - set(self.stalled))
        self.stalled_since = (self.stalled_since or at) if stalled else None
        self.stalled = stalled
        return stalled

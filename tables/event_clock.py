"""Each device's event-time clock: which buckets are closed, and which readings are late.

A device's clock is the newest reading time it has sent. A bucket closes once the clock is
past the bucket's end plus the allowed lateness (grace); a reading for a closed bucket is
late. Late readings are still stored and folded into their bucket's aggregate (the sink's
additive upsert corrects the row); here they are only counted.

The clock lives in a changelog-backed Faust table, written through when it has moved at
least ``persist_step`` (one changelog record per device and step, not per reading), so it
survives a restart or a rebalance to within that step. The aggregates do not depend on
it: they are exact by construction in the database.
"""
from __future__ import annotations

import logging
from typing import MutableMapping, Sequence

import faust
from faust.exceptions import PartitionsMismatch
from faust.types import AppT

from schema.validation import Reading

log = logging.getLogger(__name__)

BUCKET_US = 60_000_000  # late is judged against the 1-minute buckets


def event_clock_table(app: AppT, partitions: int) -> MutableMapping[str, int]:
    """The Faust table holding each device's clock (microseconds since the epoch)."""
    return app.Table(
        "device-event-clock",
        default=int,
        partitions=partitions,
        schema=faust.Schema(key_type=str, value_type=int, key_serializer="json",
                            value_serializer="json"),
        help="newest event time seen per device, in microseconds",
    )


class EventClock:
    """Tells late readings apart, per device, from the devices' event-time clocks."""

    def __init__(
        self,
        table: MutableMapping[str, int],
        grace_us: int,
        persist_step_us: int = 1_000_000,
    ) -> None:
        self._table = table
        self._grace_us = grace_us
        self._step_us = persist_step_us
        self._clocks: dict[str, int] = {}
        self._persisted: dict[str, int] = {}
        self._unpersistable: set[str] = set()

    def clock(self, device_id: str) -> int:
        """The device's clock (0 when it was never seen)."""
        clock = self._clocks.get(device_id)
        if clock is None:
            clock = self._clocks[device_id] = self._table.get(device_id) or 0
            self._persisted[device_id] = clock
        return clock

    def is_closed(self, device_id: str, bucket_start_us: int, width_us: int = BUCKET_US) -> bool:
        """Whether the device's bucket starting at ``bucket_start_us`` is closed (final)."""
        return bucket_start_us + width_us + self._grace_us <= self.clock(device_id)

    def observe(self, readings: Sequence[Reading], topic: str) -> int:
        """Advance the clock with one message's readings (one device); return how many were late."""
        device_id = readings[0].device_id
        clock = self.clock(device_id)
        closed_before = clock - self._grace_us
        late = sum(1 for r in readings if r.time_us - r.time_us % BUCKET_US + BUCKET_US <= closed_before)
        newest = max(r.time_us for r in readings)
        if newest > clock:
            self._clocks[device_id] = newest
            if newest - self._persisted[device_id] >= self._step_us:
                self._persist(device_id, newest, topic)
        return late

    def _persist(self, device_id: str, clock: int, topic: str) -> None:
        if topic in self._unpersistable:
            return
        try:
            self._table[device_id] = clock
        except PartitionsMismatch as exc:
            self._unpersistable.add(topic)
            log.warning("event clock of %s kept in memory only: %s", topic, exc)
            return
        self._persisted[device_id] = clock

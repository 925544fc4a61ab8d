"""Consumer lag of the device topics: committed offset, end offset and lag per partition.

One background round (``LagSampler.measure``) reads, for every partition of every device
topic on the broker, the end of the log and the consumer group's committed offset, and
notes which of them this worker holds. ``/pipeline/lag`` answers for this worker's
partitions from that sample, ``?scope=group`` for all of them.

``committed`` is the offset the group resumes from: its committed offset, or, while it
has committed none for a partition, the partition's log start (workers begin at the
earliest offset). ``lag = end - committed``: the messages the group has not yet made
durable. A figure that could not be measured is null, never a guessed zero.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from aiokafka.structs import TopicPartition

from web.kafka_offsets import BrokerOffsets, Watermarks


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        if self.committed is None or self.end is None:
            return None
        return self.end - self.committed

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition,
                "committed": self.committed, "end": self.end, "lag": self.lag}


@dataclass(frozen=True)
class LagSample:
    """One measurement of the group's device-topic partitions."""

    partitions: dict[TopicPartition, PartitionLag]
    assigned: frozenset[TopicPartition]  # this worker's partitions when measured
    assignment_known: bool  # False until the worker's first partition assignment
    taken_at: float = field(default_factory=time.time)

    def own(self) -> list[PartitionLag]:
        return [self.partitions.get(tp) or PartitionLag(tp.topic, tp.partition, None, None)
                for tp in sorted(self.assigned)]

    def group(self) -> list[PartitionLag]:
        return [self.partitions[tp] for tp in sorted(self.partitions)]


def partition_lags(partitions: Iterable[TopicPartition],
                   watermarks: dict[TopicPartition, Watermarks],
                   committed: dict[TopicPartition, int | None],
                   ) -> dict[TopicPartition, PartitionLag]:
    """Combine ends and committed offsets (see the module docstring for the rules)."""
    lags = {}
    for tp in partitions:
        marks = watermarks.get(tp)
        resume_at = committed.get(tp)
        if resume_at is None and tp in committed and marks is not None:
            resume_at = marks.log_start  # measured: the group never committed here
        lags[tp] = PartitionLag(tp.topic, tp.partition, resume_at,
                                None if marks is None else marks.end)
    return lags


def lag_report(partitions: Iterable[PartitionLag]) -> dict[str, Any]:
    """The JSON of ``/pipeline/lag``; ``total_lag`` is null if any partition is unmeasured."""
    rows = sorted(partitions, key=lambda p: (p.topic, p.partition))
    lags = [p.lag for p in rows]
    total = None if any(lag is None for lag in lags) else sum(lag for lag in lags if lag)
    return {"total_lag": total, "partitions": [p.as_json() for p in rows]}


def total_lag(partitions: Iterable[PartitionLag]) -> int | None:
    return lag_report(partitions)["total_lag"]


def lag_summary(sample: LagSample | None) -> dict[str, Any]:
    """Totals and partition counts only (the dashboard's view: a group may have thousands
    of partitions); null where not measured yet."""
    if sample is None:
        return {"worker": None, "group": None, "worker_partitions": None,
                "group_partitions": None}
    own = sample.own() if sample.assignment_known else None
    group = sample.group()
    return {"worker": None if own is None else total_lag(own), "group": total_lag(group),
            "worker_partitions": None if own is None else len(own),
            "group_partitions": len(group)}


@dataclass(frozen=True)
class Assignment:
    """This worker's partitions, and the device topics it subscribed to when it got them."""

    partitions: frozenset[TopicPartition]
    subscribed: frozenset[str]


class LagSampler:
    """Measures the lag of consumer group ``group_id`` over the topics ``wanted`` accepts.

    ``assignment`` returns this worker's latest assignment (None before the first);
    ``subscribed`` the device topics it follows (the broker surely has them).
    The worker's own figures count as known once an assignment was made with every device
    topic of the broker subscribed: a worker that just started first gets an assignment
    without device topics (it has not listed them yet), and reporting "no partitions, no
    lag" then would be a zero it never measured.
    """

    def __init__(self, offsets: BrokerOffsets, group_id: str, wanted: Callable[[str], bool],
                 assignment: Callable[[], Assignment | None],
                 subscribed: Callable[[], Iterable[str]] = tuple) -> None:
        self._offsets = offsets
        self._group_id = group_id
        self._wanted = wanted
        self._assignment = assignment
        self._subscribed = subscribed  # topics the worker follows: known to exist
        self._settled = False

    async def measure(self) -> LagSample:
        current = self._assignment()
        assigned = frozenset(tp for tp in (current.partitions if current else ())
                             if self._wanted(tp.topic))
        metadata, partitions = await self._offsets.partitions(self._wanted, self._subscribed())
        if current is not None and {tp.topic for tp in partitions} <= current.subscribed:
            self._settled = True
        everything = sorted(set(partitions) | assigned)
        # Committed first: the end only grows, so it is never measured below the commit.
        committed = await self._offsets.committed(self._group_id, everything)
        watermarks = await self._offsets.watermarks(metadata, everything)
        return LagSample(
            partitions=partition_lags(everything, watermarks, committed),
            assigned=assigned,
            assignment_known=self._settled,
        )

    async def close(self) -> None:
        await self._offsets.close()

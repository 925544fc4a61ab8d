"""Consumer lag of the device topics: committed offset, end offset and lag per partition.

One background round (``LagSampler.measure``) reads, for every partition of every device
topic on the broker, the end of the log and the consumer group's committed offset, and
notes which of them this worker holds. ``/pipeline/lag`` answers for this worker's
partitions from that sample, ``?scope=group`` for all of them.

``committed`` is the offset the group resumes from: its committed offset, or, while it
has committed none for a partition, the partition's log start (workers begin at the
earliest offset). ``lag = end - committed``: the messages the group has not yet made
durable. ``lag_seconds`` is the age of the oldest of them: when the log's end passed the
committed offset, interpolated between the two samples around it (``EndOffsetTimes``),
so it needs no message to be read. A figure that could not be
measured is null, never a guessed zero.
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
    lag_seconds: float | None = None

    @property
    def lag(self) -> int | None:
        if self.committed is None or self.end is None:
            return None
        return self.end - self.committed

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition,
                "committed": self.committed, "end": self.end, "lag": self.lag,
                "lag_seconds": self.lag_seconds}


@dataclass(frozen=True)
class TopicSize:
    """What one device topic retains, over all its partitions; None where not measured
    (a partition's log start unknown; a broker without DescribeLogDirs for bytes)."""

    messages: int | None
    bytes: int | None

    def as_json(self, topic: str) -> dict[str, Any]:
        return {"topic": topic, "messages": self.messages, "bytes": self.bytes}


def topic_sizes(partitions: Iterable[TopicPartition], watermarks: dict[TopicPartition, Watermarks],
                log_sizes: dict[TopicPartition, int] | None) -> dict[str, TopicSize]:
    """Messages (log end - log start) and bytes retained per topic of ``partitions``."""
    by_topic: dict[str, list[TopicPartition]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp)
    sizes: dict[str, TopicSize] = {}
    for topic, tps in by_topic.items():
        spans = [(m.log_start, m.end) for m in map(watermarks.get, tps)
                 if m is not None and m.log_start is not None]
        messages = sum(end - start for start, end in spans) if len(spans) == len(tps) else None
        retained = (sum(log_sizes[tp] for tp in tps)
                    if log_sizes is not None and all(tp in log_sizes for tp in tps) else None)
        sizes[topic] = TopicSize(messages, retained)
    return sizes


@dataclass(frozen=True)
class LagSample:
    """One measurement of the group's device-topic partitions."""

    partitions: dict[TopicPartition, PartitionLag]
    assigned: frozenset[TopicPartition]  # this worker's partitions when measured
    assignment_known: bool  # False until the worker's first partition assignment
    taken_at: float = field(default_factory=time.time)
    topics: dict[str, TopicSize] = field(default_factory=dict)  # the followed device topics

    def own(self) -> list[PartitionLag]:
        return [self.partitions.get(tp) or PartitionLag(tp.topic, tp.partition, None, None)
                for tp in sorted(self.assigned)]

    def group(self) -> list[PartitionLag]:
        return [self.partitions[tp] for tp in sorted(self.partitions)]


class EndOffsetTimes:
    """When each partition's log end passed each offset, from the samples of it.

    The message at offset ``o`` was written between the last sample whose end was at or
    below ``o`` and the first whose end was past it; its time is interpolated linearly
    between the two, as kafka-lag-exporter does (a message older than the first look
    counts from that look). Points before the one at or below the committed offset are
    dropped; at most ``max_points`` are kept per partition, spread evenly over the time
    they cover (the oldest and newest always), so a long lag is off by at most about
    1/``max_points`` of its age.
    """

    def __init__(self, max_points: int = 64) -> None:
        self._max_points = max_points
        self._seen: dict[TopicPartition, list[tuple[int, float]]] = {}

    def observe(self, tp: TopicPartition, end: int, at: float) -> None:
        points = self._seen.setdefault(tp, [])
        if points and end == points[-1][0]:
            return
        if points and end < points[-1][0]:  # the log was recreated (a broker reset)
            points.clear()
        points.append((end, at))
        if len(points) > self._max_points:
            # Drop the point whose neighbours are closest in time: the points stay spread
            # evenly over the time they cover, the oldest and newest always kept.
            del points[min(range(1, len(points) - 1),
                           key=lambda i: points[i + 1][1] - points[i - 1][1])]

    def age(self, tp: TopicPartition, committed: int, now: float) -> float:
        """Seconds since the message at ``committed`` was written (0 if it was not yet)."""
        points = self._seen.get(tp)
        if not points:
            return 0.0
        first_past = 0
        while first_past < len(points) and points[first_past][0] <= committed:
            first_past += 1
        if first_past == len(points):
            del points[:-1]  # everything committed: only the newest end is worth keeping
            return 0.0
        del points[:max(first_past - 1, 0)]  # committed past, but the one just below
        end, seen_at = points[0] if first_past == 0 else points[1]
        if first_past == 0:  # older than the first look
            return max(now - seen_at, 0.0)
        before, before_at = points[0]
        written_at = before_at + (seen_at - before_at) * (committed + 1 - before) / (end - before)
        return max(now - written_at, 0.0)

    def keep(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget partitions not in ``partitions`` (deleted topics)."""
        wanted = set(partitions)
        for tp in [tp for tp in self._seen if tp not in wanted]:
            del self._seen[tp]


def partition_lags(partitions: Iterable[TopicPartition],
                   watermarks: dict[TopicPartition, Watermarks],
                   committed: dict[TopicPartition, int | None],
                   times: EndOffsetTimes | None = None, now: float = 0.0,
                   ) -> dict[TopicPartition, PartitionLag]:
    """Combine ends and committed offsets (see the module docstring for the rules)."""
    lags = {}
    for tp in partitions:
        marks = watermarks.get(tp)
        resume_at = committed.get(tp)
        if resume_at is None and tp in committed and marks is not None:
            resume_at = marks.log_start  # measured: the group never committed here
        end = None if marks is None else marks.end
        seconds = None
        if times is not None and end is not None and resume_at is not None:
            times.observe(tp, end, now)
            seconds = times.age(tp, resume_at, now)
        lags[tp] = PartitionLag(tp.topic, tp.partition, resume_at, end, seconds)
    return lags


def lag_report(partitions: Iterable[PartitionLag]) -> dict[str, Any]:
    """The JSON of ``/pipeline/lag``; ``total_lag`` is null if any partition is unmeasured."""
    rows = sorted(partitions, key=lambda p: (p.topic, p.partition))
    lags = [p.lag for p in rows]
    total = None if any(lag is None for lag in lags) else sum(lag for lag in lags if lag)
    return {"total_lag": total, "partitions": [p.as_json() for p in rows]}


def topics_report(topics: dict[str, TopicSize]) -> list[dict[str, Any]]:
    """Per-topic retained messages and bytes, by topic name (``/pipeline/lag?scope=group``)."""
    return [topics[name].as_json(name) for name in sorted(topics)]


def total_lag(partitions: Iterable[PartitionLag]) -> int | None:
    return lag_report(partitions)["total_lag"]


def max_lag_seconds(partitions: Iterable[PartitionLag]) -> float | None:
    """The oldest uncommitted message's age over ``partitions`` (0 when there is none);
    None if a partition's age is not measured."""
    ages = [p.lag_seconds for p in partitions]
    known = [a for a in ages if a is not None]
    return None if len(known) < len(ages) else max(known, default=0.0)


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
            "group_partitions": len(group),
            "worker_seconds": None if own is None else max_lag_seconds(own),
            "group_seconds": max_lag_seconds(group)}


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
        self._end_times = EndOffsetTimes()

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
        now = time.time()
        self._end_times.keep(everything)
        log_sizes = await self._offsets.log_sizes(metadata, everything)
        return LagSample(
            partitions=partition_lags(everything, watermarks, committed, self._end_times, now),
            assigned=assigned,
            assignment_known=self._settled,
            taken_at=now,
            topics=topic_sizes(everything, watermarks, log_sizes),
        )

    async def close(self) -> None:
        await self._offsets.close()

"""End offsets and a consumer group's committed offsets, read from the broker.

The local broker (Tansu) answers ListOffsets (``end_offsets()``) with the base offset of
the last record batch + 1, not the end of the log, so the end offset is read where every
broker gets it right: the high watermark of a Fetch response. Each probe fetches every
partition from the last end it saw (or 0), at most one byte per partition and without
waiting, so a quiet partition costs nothing and a busy one at most one record batch per
probe. Committed offsets come from one OffsetFetch naming the partitions explicitly
(Tansu drops the connection when asked for "all partitions of the group").
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.structs import TopicPartition

from web.kafka_log_dirs import DescribeLogDirsRequest, sizes_of_log_dirs

log = logging.getLogger(__name__)

# A broker waits this long for data before answering a fetch; 0 makes Tansu answer with
# no partitions at all, 1 ms makes every broker answer at once with the high watermarks.
FETCH_MAX_WAIT_MS = 1
# Partitions per Fetch or OffsetFetch request: keeps requests and responses small.
PARTITIONS_PER_REQUEST = 500
METADATA_MAX_AGE_SECONDS = 60.0
_LATEST = -1  # ListOffsets timestamp meaning "the end of the log"
_READ_UNCOMMITTED = 0
_GROUP_COORDINATOR = 0


@dataclass(frozen=True)
class Watermarks:
    """Where one partition's log starts and ends (the end is the next offset written)."""

    log_start: int | None
    end: int


def group_by_topic(partitions: Iterable[TopicPartition]) -> dict[str, list[int]]:
    """Partition numbers of each topic, sorted, as Kafka requests list them."""
    topics: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        topics.setdefault(tp.topic, []).append(tp.partition)
    return topics


def watermarks_of_fetch(response: Any) -> tuple[dict[TopicPartition, Watermarks],
                                                 dict[TopicPartition, int]]:
    """High watermarks (and log starts, Fetch v5+) of a Fetch response, and error codes."""
    found: dict[TopicPartition, Watermarks] = {}
    errors: dict[TopicPartition, int] = {}
    version = response.API_VERSION
    for topic, partitions in response.topics:
        for partition, error_code, high_watermark, *rest in partitions:
            tp = TopicPartition(topic, partition)
            if error_code:
                errors[tp] = error_code
                continue
            # v5+: [last_stable_offset, log_start_offset, aborted, (preferred replica), records]
            log_start = rest[1] if version >= 5 and rest[1] >= 0 else None
            found[tp] = Watermarks(log_start=log_start, end=high_watermark)
    return found, errors


def committed_of_offset_fetch(response: Any) -> dict[TopicPartition, int | None]:
    """Committed offsets of an OffsetFetch response; None where the group has none."""
    error_code = getattr(response, "error_code", 0)
    if error_code:
        raise kafka_errors.for_code(error_code)("OffsetFetch failed")
    committed: dict[TopicPartition, int | None] = {}
    for topic, partitions in response.topics:
        for partition, offset, _metadata, error_code in partitions:
            if error_code:
                raise kafka_errors.for_code(error_code)(
                    f"OffsetFetch failed for {topic}[{partition}]"
                )
            committed[TopicPartition(topic, partition)] = offset if offset >= 0 else None
    return committed


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class BrokerOffsets:
    """A small Kafka client of its own that reads offsets; ``start`` before use."""

    def __init__(self, bootstrap_servers: list[str], *, client_id: str = "devicestream-lag",
                 request_timeout_ms: int = 10_000, **security: Any) -> None:
        self._client_kwargs = {"bootstrap_servers": bootstrap_servers, "client_id": client_id,
                               "request_timeout_ms": request_timeout_ms, **security}
        self._client: AIOKafkaClient | None = None  # made in start(): it needs a running loop
        self._next_fetch: dict[TopicPartition, int] = {}  # last end seen: never past the end
        self._metadata: ClusterMetadata | None = None
        self._metadata_at = 0.0
        self._metadata_invalid = False
        self._found: tuple[ClusterMetadata, list[TopicPartition]] | None = None
        self._coordinators: dict[str, int] = {}
        self._log_dirs_supported = True  # until a broker lacks DescribeLogDirs

    async def start(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(**self._client_kwargs)
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def partitions(self, wanted: Callable[[str], bool], expected: Iterable[str] = (),
                         ) -> tuple[ClusterMetadata, list[TopicPartition]]:
        """Cluster metadata and every partition of the topics ``wanted`` accepts.

        Metadata of every topic is costly to decode on a broker with thousands of
        partitions, so it is kept for ``METADATA_MAX_AGE_SECONDS``, and fetched again
        sooner when a topic of ``expected`` is missing or a partition's leader failed.
        """
        client = await self.start()
        metadata = self._metadata
        if (metadata is None or self._metadata_invalid
                or time.monotonic() - self._metadata_at > METADATA_MAX_AGE_SECONDS
                or not set(expected) <= metadata.topics()):
            metadata = await client.fetch_all_metadata()
            self._metadata, self._metadata_at = metadata, time.monotonic()
            self._metadata_invalid = False
        if self._found is None or self._found[0] is not metadata:
            self._found = (metadata, sorted(
                TopicPartition(topic, partition)
                for topic in metadata.topics()
                if wanted(topic)
                for partition in metadata.partitions_for_topic(topic) or ()
            ))
        return metadata, list(self._found[1])

    def _by_leader(self, metadata: ClusterMetadata,
                   partitions: Iterable[TopicPartition]) -> dict[int, list[TopicPartition]]:
        """``partitions`` grouped by their leader's node id; one without a leader is left
        out and makes the metadata be fetched again."""
        by_leader: dict[int, list[TopicPartition]] = {}
        for tp in partitions:
            leader = metadata.leader_for_partition(tp)
            if leader is not None and leader >= 0:
                by_leader.setdefault(leader, []).append(tp)
            else:
                self._metadata_invalid = True
        return by_leader

    async def ends_of(self, topic: str) -> dict[TopicPartition, int]:
        """The end offset of each partition of ``topic``; raises when one cannot be read."""
        metadata, partitions = await self.partitions(lambda t: t == topic, [topic])
        ends = {tp: marks.end
                for tp, marks in (await self.watermarks(metadata, partitions)).items()}
        if len(ends) < len(partitions):
            raise kafka_errors.KafkaError(f"the end of {topic} could not be read")
        return ends

    async def watermarks(self, metadata: ClusterMetadata,
                         partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Watermarks]:
        """The log start and end of each partition; partitions that failed are left out."""
        result: dict[TopicPartition, Watermarks] = {}
        failures: list[BaseException] = []
        for leader, tps in self._by_leader(metadata, partitions).items():
            for chunk in _chunks(tps, PARTITIONS_PER_REQUEST):
                try:
                    result.update(await self._fetch_watermarks(leader, chunk))
                except (kafka_errors.KafkaError, OSError) as exc:
                    failures.append(exc)
                    self._metadata_invalid = True
        if failures and not result:
            raise failures[0]
        # Only what this round measured: partitions of deleted topics are forgotten.
        self._next_fetch = {tp: marks.end for tp, marks in result.items()}
        return result

    async def log_sizes(self, metadata: ClusterMetadata, partitions: Iterable[TopicPartition],
                        ) -> dict[TopicPartition, int] | None:
        """Bytes on disk of each partition, as its leader reports them (DescribeLogDirs).

        None when the brokers do not implement DescribeLogDirs (then it is not asked
        again); partitions whose leader failed to answer are left out.
        """
        if not self._log_dirs_supported:
            return None
        client = await self.start()
        sizes: dict[TopicPartition, int] = {}
        for leader, tps in self._by_leader(metadata, partitions).items():
            for chunk in _chunks(tps, PARTITIONS_PER_REQUEST):
                request = DescribeLogDirsRequest(group_by_topic(chunk))
                try:
                    response = await client.send(leader, request)
                except kafka_errors.IncompatibleBrokerVersion:
                    log.info("the broker does not implement DescribeLogDirs: "
                             "topic sizes in bytes are not reported")
                    self._log_dirs_supported = False
                    return None
                except (kafka_errors.KafkaError, OSError) as exc:
                    log.debug("DescribeLogDirs of broker %s failed: %s", leader, exc)
                    continue
                sizes.update(sizes_of_log_dirs(response, chunk))
        return sizes

    async def _fetch_watermarks(self, node: int,
                                tps: list[TopicPartition]) -> dict[TopicPartition, Watermarks]:
        offsets = {tp: self._next_fetch.get(tp, 0) for tp in tps}
        found, errors = await self._fetch(node, offsets)
        out_of_range = [tp for tp, code in errors.items()
                        if kafka_errors.for_code(code) is kafka_errors.OffsetOutOfRangeError]
        if out_of_range:  # the log was truncated or recreated: start again from its end
            ends = await self._list_latest(node, out_of_range)
            retried, errors_again = await self._fetch(node, ends)
            found.update(retried)
            errors = {**errors, **errors_again}
        for tp, code in errors.items():
            if tp not in found:
                self._next_fetch.pop(tp, None)
                self._metadata_invalid = True  # a moved leader or a deleted topic
                log.debug("fetching the end of %s failed: %s", tp, kafka_errors.for_code(code))
        return found

    async def _fetch(self, node: int, offsets: dict[TopicPartition, int]) -> tuple[
            dict[TopicPartition, Watermarks], dict[TopicPartition, int]]:
        topics = [
            (topic, [(partition, offsets[TopicPartition(topic, partition)], 1)
                     for partition in partitions])
            for topic, partitions in group_by_topic(offsets).items()
        ]
        client = await self.start()
        response = await client.send(
            node, FetchRequest(FETCH_MAX_WAIT_MS, 0, 1, _READ_UNCOMMITTED, topics)
        )
        return watermarks_of_fetch(response)

    async def _list_latest(self, node: int,
                           tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """ListOffsets(latest): right on Kafka, at or before the end on Tansu."""
        request = OffsetRequest(-1, _READ_UNCOMMITTED, [
            (topic, [(partition, _LATEST) for partition in partitions])
            for topic, partitions in group_by_topic(tps).items()
        ])
        client = await self.start()
        response = await client.send(node, request)
        ends: dict[TopicPartition, int] = {}
        for topic, partitions in response.topics:
            for partition, error_code, *rest in partitions:
                if not error_code:
                    # v0: [offsets]; v1+: timestamp, offset (, leader_epoch v4+)
                    offset = rest[0][0] if response.API_VERSION == 0 else rest[1]
                    ends[TopicPartition(topic, partition)] = max(offset, 0)
        return ends

    async def committed(self, group_id: str,
                        partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None: never committed)."""
        tps = sorted(partitions)
        if not tps:
            return {}
        client = await self.start()
        result: dict[TopicPartition, int | None] = {}
        for chunk in _chunks(tps, PARTITIONS_PER_REQUEST):
            request = OffsetFetchRequest(group_id, list(group_by_topic(chunk).items()))
            node = await self._coordinator(group_id)
            try:
                result.update(committed_of_offset_fetch(await client.send(node, request)))
            except (kafka_errors.KafkaError, OSError):
                self._coordinators.pop(group_id, None)  # look it up again next time
                raise
        return result

    async def _coordinator(self, group_id: str) -> int:
        if group_id not in self._coordinators:
            client = await self.start()
            self._coordinators[group_id] = await client.coordinator_lookup(
                _GROUP_COORDINATOR, group_id
            )
        return self._coordinators[group_id]

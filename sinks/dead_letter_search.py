"""Finds dead letters already on ``device-data.dlq``: the outbox's check before publishing again.

A worker that crashed between the broker's acknowledgement of a dead letter and the
outbox's record of it leaves the letter staged but not marked published. Whoever consumes
that message again must not publish it twice, so the outbox asks here first. The search
reads each DLQ partition from where it may be (past the last letter recorded published
before the unconfirmed ones were staged: anything acknowledged earlier sits below it) to
the partition's end, and matches letters by their source (topic, partition, offset,
index). It runs only when such letters exist, which takes a crash at that moment.
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from schema.dead_letters import DeadLetter
from web.kafka_offsets import BrokerOffsets

# (source topic, partition, offset, index or None): what a DLQ record names
Source = tuple[str, int, int, int | None]
# (DLQ partition, offset) of a published letter
Position = tuple[int, int]


def source_of(letter: DeadLetter) -> Source:
    return (letter.topic, letter.partition, letter.offset, letter.index)


def source_of_record(value: bytes) -> Source | None:
    """The source a DLQ record names; None for a record that is not one of ours."""
    try:
        record = orjson.loads(value)
        return (record["topic"], int(record["partition"]), int(record["offset"]),
                record.get("index"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None


class DeadLetterSearch:
    """Reads the DLQ topic with a consumer of its own (no group, nothing committed)."""

    def __init__(self, topic: str, client_kwargs: Mapping[str, Any],
                 timeout: float = 120.0) -> None:
        self._topic = topic
        self._client_kwargs = dict(client_kwargs)
        self._timeout = timeout

    async def find(self, letters: Iterable[DeadLetter],
                   starts: Mapping[int, int]) -> dict[Source, Position]:
        """Where each of ``letters`` already is on the DLQ; letters not found are left out.

        ``starts``: per DLQ partition, the first offset that may hold one of them (a
        partition not named, or whose start lies past its end, is read from its log start).
        """
        wanted = {source_of(letter) for letter in letters}
        found: dict[Source, Position] = {}
        offsets = BrokerOffsets(client_id="devicestream-dlq-search", **self._client_kwargs)
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                    client_id="devicestream-dlq-search", **self._client_kwargs)
        await consumer.start()
        try:
            ends = await offsets.ends_of(self._topic)
            consumer.assign(list(ends))
            for tp, end in ends.items():
                # A start past the end was recorded on another incarnation of the topic
                # (deleted and created again, a broker that lost its data): read it all.
                if starts.get(tp.partition, end + 1) <= end:
                    consumer.seek(tp, starts[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            await self._read(consumer, ends, wanted, found)
        finally:
            await consumer.stop()
            await offsets.close()
        return found

    async def _read(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int],
                    wanted: set[Source], found: dict[Source, Position]) -> None:
        async def until_the_ends() -> None:
            remaining = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
            while remaining and len(found) < len(wanted):
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, messages in batch.items():
                    for message in messages:
                        source = source_of_record(message.value)
                        if source in wanted and source not in found:
                            found[source] = (tp.partition, message.offset)
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}

        await asyncio.wait_for(until_the_ends(), self._timeout)

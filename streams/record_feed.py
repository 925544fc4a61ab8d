"""The ingest pipeline's input: each fetch's device-topic records at once, acked in bulk.

Faust turns every fetched record into a message and an event and passes it through its
conductor, a channel queue and a stream, one at a time: with one reading per message that
path costs more than validating and storing the reading
(docs/performance.md#what-profiling-found-and-fixed). The records of the topics a :class:`RecordFeed` wants
skip that path: the consumer hands each fetch's records for them to the feed as aiokafka
returned them, and the pipeline acks the offsets it has made durable with one call per
batch, into the bookkeeping Faust's commits read. (Faust's "commit every N acks" does not
count them: the pipeline commits at most once a second after a batch, and Faust's commit
timer still runs.)

What stays as in Faust's own path: a partition's offset is committed only up to its
oldest record not acked (gaps in its offsets, such as transaction markers, are registered
as Faust's drain loop registers them); a rebalance waits until every record handed over
is acked before partitions are revoked; records fetched while the flow is stopped, or of
partitions no longer active, are not handed over (Faust seeks back to the committed
offsets and fetches them again).
"""
from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from aiokafka.structs import ConsumerRecord
from faust.types import TP

# One fetch's records of the wanted topics, per partition, in offset order.
Chunk = list[tuple[TP, list[ConsumerRecord]]]


class RecordFeed:
    """Fetched records of the topics ``wanted`` names, for the one pipeline consuming them.

    At most ``max_chunks`` fetches wait to be taken: a full feed holds the consumer's
    fetching back until the pipeline catches up.
    """

    def __init__(self, consumer: Any, wanted: Callable[[str], bool], max_chunks: int = 2) -> None:
        self._consumer = consumer
        self._wanted = wanted
        self._chunks: asyncio.Queue[Chunk] = asyncio.Queue(maxsize=max_chunks)
        self.pending = 0  # records handed over (or waiting to be) and not yet acked

    async def take(self, records: Mapping[TP, list[ConsumerRecord]], active: set[TP] | None
                   ) -> dict[TP, list[ConsumerRecord]]:
        """Take the wanted topics' records of one fetch; return the others, for Faust.

        ``active`` are the partitions the fetch was for (None: all); records of others
        are dropped, as Faust drops them.
        """
        consumer = self._consumer
        others: dict[TP, list[ConsumerRecord]] = {}
        chunk: Chunk = []
        for tp, tp_records in records.items():
            if not self._wanted(tp.topic):
                others[tp] = tp_records
            elif active is None or tp in active or consumer.buffered(tp):
                fresh = await consumer.register_read(tp, tp_records)
                if fresh:
                    chunk.append((tp, fresh))
                    consumer.app.monitor.track_tp_end_offset(tp, consumer.highwater(tp))
        if chunk:
            count = sum(len(tp_records) for _, tp_records in chunk)
            self.pending += count  # before waiting: a rebalance must wait for these too
            try:
                await self._chunks.put(chunk)
            except BaseException:  # the fetcher was stopped meanwhile (a shutdown)
                self.pending -= count  # never handed over, so never acked: replayed
                raise
        return others

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Each fetch's records, in the order they were fetched."""
        inbound = self._consumer.app.monitor.stream_inbound_time
        while True:
            chunk = await self._chunks.get()
            now = monotonic()
            for tp, _ in chunk:  # Faust's stall detector reads when a partition last moved
                inbound[tp] = now
            yield chunk

    def ack(self, offsets: Mapping[TP, Sequence[int]]) -> None:
        """Mark these offsets durable: Faust may commit past them."""
        self.pending -= sum(len(tp_offsets) for tp_offsets in offsets.values())
        self._consumer.ack_offsets(offsets)

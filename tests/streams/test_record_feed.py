"""The consumer's record feed: which records reach the ingest pipeline, and how its bulk
acks turn into Faust's commit offsets (gaps, revoked partitions, rebalances)."""
from __future__ import annotations

import asyncio

from faust.types import TP

from streams.record_feed import RecordFeed
from tests.records import record
from tests.streams.test_faust_internals import new_consumer

DEVICE = TP("device-data-a", 0)


def records(tp: TP, *offsets: int) -> list:
    return [record(tp.topic, b"a", b"{}", offset=o, partition=tp.partition) for o in offsets]


def offsets_of(chunk: list) -> list[tuple[TP, list[int]]]:
    return [(tp, [r.offset for r in rs]) for tp, rs in chunk]


async def consumer_with(*assigned: TP):
    consumer = new_consumer()
    consumer.highwater = lambda tp: 100
    consumer.assignment = lambda: set(assigned)

    async def no_commit(*args: object, **kwargs: object) -> bool:
        return True

    consumer.commit = no_commit
    return consumer


async def test_a_fetch_s_device_records_go_to_the_feed_and_other_topics_to_faust() -> None:
    consumer = await consumer_with(DEVICE)
    leader = TP("devicestream-__assignor-__leader", 0)
    others = await consumer.feed.take({DEVICE: records(DEVICE, 0, 1), leader: records(leader, 0)},
                                      None)
    assert list(others) == [leader]
    chunk = await anext(consumer.feed.chunks())
    assert offsets_of(chunk) == [(DEVICE, [0, 1])] and consumer.feed.pending == 2


async def test_records_of_partitions_the_fetch_was_not_for_are_dropped() -> None:
    consumer = await consumer_with(DEVICE)
    paused = TP("device-data-b", 0)
    others = await consumer.feed.take({DEVICE: records(DEVICE, 0), paused: records(paused, 0)},
                                      {DEVICE})
    assert others == {}
    assert offsets_of(await anext(consumer.feed.chunks())) == [(DEVICE, [0])]
    assert consumer.feed.pending == 1


async def test_offsets_are_committed_only_up_to_the_first_record_not_yet_acked() -> None:
    consumer = await consumer_with(DEVICE)
    await consumer.feed.take({DEVICE: records(DEVICE, 0, 1, 2, 3, 4)}, None)
    consumer.feed.ack({DEVICE: [0, 1, 3, 4]})
    assert consumer._new_offset(DEVICE) == 2, "offset 2 is not durable yet"
    consumer._committed_offset[DEVICE] = 2
    consumer.feed.ack({DEVICE: [2]})
    assert consumer._new_offset(DEVICE) == 5 and consumer.feed.pending == 0


async def test_gaps_in_a_partition_s_offsets_do_not_hold_its_commits_back() -> None:
    consumer = await consumer_with(DEVICE)
    # Offsets 2-4 and 6-8 hold no records (transaction markers, compaction).
    await consumer.feed.take({DEVICE: records(DEVICE, 0, 1, 5)}, None)
    await consumer.feed.take({DEVICE: records(DEVICE, 9)}, None)
    consumer.feed.ack({DEVICE: [0, 1, 5, 9]})
    assert consumer._new_offset(DEVICE) == 10


async def test_records_before_the_offset_faust_sought_to_are_not_handed_over() -> None:
    consumer = await consumer_with(DEVICE)
    consumer._read_offset[DEVICE] = 2  # what Consumer.seek(DEVICE, 2) leaves
    await consumer.feed.take({DEVICE: records(DEVICE, 0, 1, 2, 3)}, None)
    assert offsets_of(await anext(consumer.feed.chunks())) == [(DEVICE, [2, 3])]
    assert consumer.feed.pending == 2


async def test_acks_of_a_revoked_partition_are_dropped() -> None:
    consumer = await consumer_with(DEVICE)
    await consumer.feed.take({DEVICE: records(DEVICE, 0, 1)}, None)
    consumer.assignment = lambda: set()
    consumer.feed.ack({DEVICE: [0, 1]})
    assert consumer._acked[DEVICE] == [] and consumer.feed.pending == 0


async def test_a_rebalance_waits_until_every_record_handed_over_is_acked() -> None:
    consumer = await consumer_with(DEVICE)
    await consumer.feed.take({DEVICE: records(DEVICE, 0, 1)}, None)
    waiting = asyncio.create_task(consumer.wait_empty())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    consumer.feed.ack({DEVICE: [0, 1]})
    await asyncio.wait_for(waiting, timeout=2)


async def test_a_full_feed_holds_the_next_fetch_back_until_the_pipeline_takes_one() -> None:
    consumer = await consumer_with(DEVICE)
    feed = RecordFeed(consumer, lambda topic: True, max_chunks=1)
    await feed.take({DEVICE: records(DEVICE, 0)}, None)
    blocked = asyncio.create_task(feed.take({DEVICE: records(DEVICE, 1)}, None))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    chunks = feed.chunks()
    assert offsets_of(await anext(chunks)) == [(DEVICE, [0])]
    await asyncio.wait_for(blocked, timeout=2)
    assert offsets_of(await anext(chunks)) == [(DEVICE, [1])]


async def test_a_fetch_cancelled_while_the_feed_is_full_is_not_waited_for() -> None:
    # Stopping the worker cancels the fetcher, maybe while it waits for room in the feed;
    # those records are never acked, and a shutdown waiting for them would hang.
    consumer = await consumer_with(DEVICE)
    feed = RecordFeed(consumer, lambda topic: True, max_chunks=1)
    await feed.take({DEVICE: records(DEVICE, 0)}, None)
    blocked = asyncio.create_task(feed.take({DEVICE: records(DEVICE, 1, 2)}, None))
    await asyncio.sleep(0.1)
    assert feed.pending == 3
    blocked.cancel()
    await asyncio.gather(blocked, return_exceptions=True)
    assert feed.pending == 1

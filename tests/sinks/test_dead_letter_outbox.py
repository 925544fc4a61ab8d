"""The dead-letter outbox against the real database and broker: each dead letter is
published once, also when a crash came between the broker's acknowledgement and the
outbox's record of it."""
from __future__ import annotations

from typing import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schema.dead_letters import DeadLetter
from sinks.dead_letter_outbox import DeadLetterOutbox
from sinks.dead_letter_search import DeadLetterSearch
from sinks.postgres import create_pool
from streams.topics import DEAD_LETTER_TOPIC, kafka_client_kwargs
from tests.stack import SETTINGS, create_topics, db_connect, read_dead_letters, unique

pytestmark = pytest.mark.integration


def letter(topic: str, offset: int, index: int | None, message_ms: int = 1_700_000_000_000,
           ) -> DeadLetter:
    record = {"error": "x", "topic": topic, "partition": 0, "offset": offset, "raw": "{}"}
    if index is not None:
        record["index"] = index
    return DeadLetter(topic, 0, offset, index, message_ms, b"k", orjson.dumps(record))


@pytest.fixture
async def outbox(stack: None) -> AsyncIterator[DeadLetterOutbox]:
    await create_topics([DEAD_LETTER_TOPIC])
    pool = await create_pool(SETTINGS)
    try:
        yield DeadLetterOutbox(pool, DeadLetterSearch(DEAD_LETTER_TOPIC,
                                                      kafka_client_kwargs(SETTINGS)))
    finally:
        await pool.close()


async def publish(letters: list[DeadLetter]) -> list[tuple[int, int]]:
    """Publish as the worker does; where each landed."""
    producer = AIOKafkaProducer(**kafka_client_kwargs(SETTINGS))
    await producer.start()
    try:
        acks = [await producer.send_and_wait(DEAD_LETTER_TOPIC, d.value, key=d.key)
                for d in letters]
    finally:
        await producer.stop()
    return [(ack.partition, ack.offset) for ack in acks]


async def test_staged_dead_letters_are_pending_until_marked_published(outbox) -> None:
    topic = "device-data-" + unique("outbox-")
    letters = [letter(topic, 5, None), letter(topic, 6, 2)]
    assert await outbox.stage(letters) == letters
    # Staged again before publication (a crash before publishing): not on the DLQ, pending.
    assert await outbox.stage(letters) == letters
    await outbox.mark_published(letters[:1], [(0, 10)])
    assert await outbox.stage(letters) == letters[1:]
    await outbox.mark_published(letters[1:], [(0, 11)])
    assert await outbox.stage(letters) == []


async def test_a_letter_acknowledged_but_not_recorded_before_a_crash_is_not_published_again(
        outbox) -> None:
    topic = "device-data-" + unique("outbox-crash-")
    letters = [letter(topic, 7, None), letter(topic, 8, 0), letter(topic, 8, 1)]
    assert await outbox.stage(letters) == letters
    positions = await publish(letters[:2])  # the third was never sent
    # crash: mark_published never ran; the messages are consumed again
    assert await outbox.stage(letters) == letters[2:]
    conn = await db_connect()
    try:
        rows = await conn.fetch(
            'SELECT "offset", index, dlq_partition, dlq_offset FROM dead_letters '
            "WHERE topic = $1 AND published_at IS NOT NULL ORDER BY 1, 2", topic)
    finally:
        await conn.close()
    assert [(r["offset"], r["index"], (r["dlq_partition"], r["dlq_offset"])) for r in rows] == [
        (7, -1, positions[0]), (8, 0, positions[1])]
    on_the_dlq = await read_dead_letters({topic}, 2)
    assert sorted((r["offset"], r.get("index")) for r in on_the_dlq) == [(7, None), (8, 0)]


async def test_a_new_message_at_a_reused_offset_is_dead_lettered_again(outbox) -> None:
    topic = "device-data-" + unique("outbox-")
    before = letter(topic, 0, None, 1_700_000_000_000)
    after = letter(topic, 0, None, 1_700_000_999_000)
    staged = await outbox.stage([before])
    await outbox.mark_published(staged, [(0, 1)])
    # The topic was created again (or the broker lost its data): offsets start over.
    assert await outbox.stage([after]) == [after]

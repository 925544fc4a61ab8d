"""The dead-letter outbox against the real database: each dead letter is published once."""
from __future__ import annotations

import pytest

from schema.dead_letters import DeadLetter
from sinks.dead_letter_outbox import DeadLetterOutbox
from sinks.postgres import create_pool
from tests.stack import SETTINGS, unique

pytestmark = pytest.mark.integration


async def test_staged_dead_letters_are_pending_until_marked_published(stack) -> None:
    topic = "device-data-" + unique("outbox-")
    letters = [DeadLetter(topic, 0, 5, None, 1_700_000_000_000, b"k", b'{"error": "x"}'),
               DeadLetter(topic, 0, 6, 2, 1_700_000_000_001, b"k", b'{"error": "y"}')]
    pool = await create_pool(SETTINGS)
    try:
        outbox = DeadLetterOutbox(pool)
        assert await outbox.stage(letters) == letters
        # Staged again before publication (a crash in between): still pending.
        assert await outbox.stage(letters) == letters
        await outbox.mark_published(letters[:1])
        assert await outbox.stage(letters) == letters[1:]
        await outbox.mark_published(letters[1:])
        assert await outbox.stage(letters) == []
    finally:
        await pool.close()


async def test_a_new_message_at_a_reused_offset_is_dead_lettered_again(stack) -> None:
    topic = "device-data-" + unique("outbox-")
    before = DeadLetter(topic, 0, 0, None, 1_700_000_000_000, b"k", b'{"error": "x"}')
    after = DeadLetter(topic, 0, 0, None, 1_700_000_999_000, b"k", b'{"error": "x"}')
    pool = await create_pool(SETTINGS)
    try:
        outbox = DeadLetterOutbox(pool)
        await outbox.mark_published(await outbox.stage([before]))
        # The topic was created again (or the broker lost its data): offsets start over.
        assert await outbox.stage([after]) == [after]
    finally:
        await pool.close()

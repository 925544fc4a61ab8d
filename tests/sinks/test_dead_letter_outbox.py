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
    letters = [DeadLetter(topic, 0, 5, None, b"k", b'{"error": "x"}'),
               DeadLetter(topic, 0, 6, 2, b"k", b'{"error": "y"}')]
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

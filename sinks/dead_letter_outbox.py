"""The dead-letter outbox: exactly one publication per invalid reading, even on replays.

``stage`` records a batch's dead letters and returns those not published yet (new ones,
and ones a crash left unpublished); after the broker acknowledges them, ``mark_published``
records that. A message consumed again finds its dead letters published and sends nothing.
Only a crash between the broker's acknowledgement and ``mark_published`` repeats one, with
the same topic, partition, offset and index.
"""
from __future__ import annotations

from typing import Sequence

import asyncpg

from schema.dead_letters import DeadLetter

_STAGE = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[],
                         $6::bytea[], $7::bytea[])
        AS b(topic, partition, "offset", index, message_ms, key, record)
), recorded AS (
    INSERT INTO dead_letters (topic, partition, "offset", index, message_ms, key, record)
    SELECT * FROM batch
    ON CONFLICT DO NOTHING
    RETURNING topic, partition, "offset", index, message_ms
)
SELECT topic, partition, "offset", index, message_ms FROM recorded
UNION
SELECT d.topic, d.partition, d."offset", d.index, d.message_ms
FROM dead_letters d JOIN batch b USING (topic, partition, "offset", index, message_ms)
WHERE d.published_at IS NULL
"""

_MARK = """
UPDATE dead_letters SET published_at = now()
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[])
    AS p(topic, partition, "offset", index, message_ms)
WHERE (dead_letters.topic, dead_letters.partition, dead_letters."offset", dead_letters.index,
       dead_letters.message_ms) = (p.topic, p.partition, p."offset", p.index, p.message_ms)
"""


def _key(letter: DeadLetter) -> tuple[str, int, int, int, int]:
    index = -1 if letter.index is None else letter.index
    return (letter.topic, letter.partition, letter.offset, index, letter.message_ms)


def _columns(letters: Sequence[DeadLetter]) -> list[list[object]]:
    return [
        [d.topic for d in letters],
        [d.partition for d in letters],
        [d.offset for d in letters],
        [-1 if d.index is None else d.index for d in letters],
        [d.message_ms for d in letters],
    ]


class DeadLetterOutbox:
    """Records dead letters in the database around their publication."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def stage(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Record ``letters``; return the ones that still have to be published."""
        columns = _columns(letters)
        columns += [[d.key for d in letters], [d.value for d in letters]]
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_STAGE, *columns)
        pending = {(r["topic"], r["partition"], r["offset"], r["index"], r["message_ms"])
                   for r in rows}
        return [d for d in letters if _key(d) in pending]

    async def mark_published(self, letters: Sequence[DeadLetter]) -> None:
        """Record that the broker acknowledged ``letters``."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_MARK, *_columns(letters))

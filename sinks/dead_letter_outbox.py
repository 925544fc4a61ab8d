"""The dead-letter outbox: exactly one publication per invalid reading, even on replays.

``stage`` records a batch's dead letters and returns those not published yet. After the
broker acknowledges them, ``mark_published`` records that, with where each landed on the
DLQ. A message consumed again finds its dead letters published and sends nothing.

A crash between the broker's acknowledgement and ``mark_published`` leaves letters staged
but unconfirmed. When ``stage`` meets such letters again, it looks for them on the DLQ
(``DeadLetterSearch``) from the last position recorded before they were staged, marks those
it finds and returns only the others: none is published twice.
"""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

import asyncpg

from schema.dead_letters import DeadLetter
from sinks.dead_letter_search import DeadLetterSearch, Position, source_of

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
SELECT topic, partition, "offset", index, message_ms, NULL::timestamptz AS staged_before
FROM recorded
UNION ALL
SELECT d.topic, d.partition, d."offset", d.index, d.message_ms, d.created_at
FROM dead_letters d JOIN batch b USING (topic, partition, "offset", index, message_ms)
WHERE d.published_at IS NULL
"""

# Per DLQ partition, the offset after the last letter acknowledged before $1: a letter
# staged at $1 or later was published (if at all) past it.
_SEARCH_STARTS = """
SELECT dlq_partition, max(dlq_offset) + 1 AS start FROM dead_letters
WHERE published_at < $1 AND dlq_partition IS NOT NULL
GROUP BY dlq_partition
"""

_MARK = """
UPDATE dead_letters SET published_at = now(), dlq_partition = p.dlq_partition,
                        dlq_offset = p.dlq_offset
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[], $6::int[],
            $7::bigint[])
    AS p(topic, partition, "offset", index, message_ms, dlq_partition, dlq_offset)
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

    def __init__(self, pool: asyncpg.Pool, search: DeadLetterSearch) -> None:
        self._pool = pool
        self._search = search

    async def stage(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Record ``letters``; return the ones that still have to be published."""
        columns = _columns(letters)
        columns += [[d.key for d in letters], [d.value for d in letters]]
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_STAGE, *columns)
        # each pending letter's key -> when an earlier attempt staged it (None: new now)
        staged_before = {(r["topic"], r["partition"], r["offset"], r["index"],
                          r["message_ms"]): r["staged_before"] for r in rows}
        pending = [d for d in letters if _key(d) in staged_before]
        unconfirmed = [d for d in pending if staged_before[_key(d)] is not None]
        if not unconfirmed:
            return pending
        since = min(staged_before[_key(d)] for d in unconfirmed)
        published = await self._published_already(unconfirmed, since)
        return [d for d in pending if d not in published]

    async def _published_already(self, unconfirmed: list[DeadLetter],
                                 since: datetime) -> list[DeadLetter]:
        """Those of ``unconfirmed`` (staged at ``since`` or later) that are on the DLQ,
        marked published where they were found."""
        async with self._pool.acquire() as conn, conn.transaction():
            starts = {r["dlq_partition"]: r["start"]
                      for r in await conn.fetch(_SEARCH_STARTS, since)}
        found = await self._search.find(unconfirmed, starts)
        published = [d for d in unconfirmed if source_of(d) in found]
        if published:
            await self.mark_published(published, [found[source_of(d)] for d in published])
        return published

    async def mark_published(self, letters: Sequence[DeadLetter],
                             positions: Sequence[Position]) -> None:
        """Record that the broker acknowledged ``letters`` at ``positions`` (DLQ partition,
        offset), one each."""
        columns = _columns(letters)
        columns += [[p for p, _ in positions], [o for _, o in positions]]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_MARK, *columns)

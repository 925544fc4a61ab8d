"""Batched, idempotent writes of data points into the ``readings`` hypertable.

A batch goes in one transaction: COPY (binary) into a per-connection temporary staging
table, then ``INSERT ... ON CONFLICT DO NOTHING`` into ``readings``, additive upserts of
the rows that were new into ``readings_1m`` and ``readings_1h``, and an upsert of the
devices' first/last seen times. Writing the same batch twice stores nothing new, which is
what makes replays after a crash harmless: the pipeline commits Kafka offsets only after
this transaction has committed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import asyncpg

# (time in microseconds since the epoch, device_id, metric, value)
Point = tuple[int, str, str, float]

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS readings_staging (
    time_us   bigint           NOT NULL,
    device_id text             NOT NULL,
    metric    text             NOT NULL,
    value     double precision NOT NULL
) ON COMMIT DELETE ROWS
"""

# Folds the newly inserted points into one aggregate table: an additive upsert, so only
# points new to ``readings`` count, once each.
_FOLD = """{name} AS (
    INSERT INTO {table} AS a (bucket, device_id, metric, count, sum, min, max)
    SELECT time_bucket('{width}', time), device_id, metric,
           count(*), sum(value), min(value), max(value)
    FROM inserted GROUP BY 2, 3, 1 ORDER BY 2, 3, 1
    ON CONFLICT (device_id, metric, bucket) DO UPDATE
        SET count = a.count + excluded.count, sum = a.sum + excluded.sum,
            min = least(a.min, excluded.min), max = greatest(a.max, excluded.max)
)"""

_MERGE = """
WITH staged AS MATERIALIZED (
    SELECT timestamptz 'epoch' + time_us * interval '1 microsecond' AS time,
           device_id, metric, value
    FROM readings_staging
), inserted AS MATERIALIZED (
    INSERT INTO readings (time, device_id, metric, value)
    SELECT time, device_id, metric, value FROM staged
    ON CONFLICT (device_id, metric, time) DO NOTHING
    RETURNING time, device_id, metric, value
), seen AS (
    INSERT INTO devices AS d (device_id, first_seen, last_seen)
    SELECT device_id, min(time), max(time) FROM staged GROUP BY device_id ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE
        SET first_seen = least(d.first_seen, excluded.first_seen),
            last_seen = greatest(d.last_seen, excluded.last_seen)
), {minute}, {hour}
SELECT count(*) FROM inserted
""".format(
    minute=_FOLD.format(name="minute", table="readings_1m", width="1 minute"),
    hour=_FOLD.format(name="hour", table="readings_1h", width="1 hour"),
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch did to the database."""

    points: int  # points in the batch, after dropping in-batch repeats of the same key
    inserted: int  # rows that were new to ``readings``


def first_of_each_key(points: Sequence[Point]) -> list[Point]:
    """Drop later points with the same (device, metric, time): the first value stays."""
    seen: set[tuple[int, str, str]] = set()
    unique: list[Point] = []
    for point in points:
        key = (point[0], point[1], point[2])
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return unique


class TimescaleSink:
    """Writes batches of points; safe to call again with the same batch."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def write(self, points: Sequence[Point]) -> WriteResult:
        """Store ``points`` exactly once; raises asyncpg errors unchanged."""
        unique = first_of_each_key(points)
        if not unique:
            return WriteResult(points=0, inserted=0)
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(_STAGING)
                await conn.copy_records_to_table("readings_staging", records=unique)
                inserted = await conn.fetchval(_MERGE)
        return WriteResult(points=len(unique), inserted=inserted)

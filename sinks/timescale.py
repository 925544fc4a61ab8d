"""Batched, idempotent writes of data points into the readings hypertable.

Storage layout (migration 0004): a point is stored as (time, series_id, value) in
``storage.readings``, where ``storage.series`` maps (device_id, metric) to a 4-byte id; the
``readings`` view gives it back as (time, device_id, metric, value). The sink resolves the
ids of a batch from a per-sink cache; ids it has not seen yet are created (or looked up) in
a short transaction of their own, committed before the batch's. A series row is never
deleted, so a cached id stays valid, and a batch that fails after creating series leaves
only dictionary entries behind.

A batch goes in one transaction: COPY (binary) of (time, series_id, value, arrival) into a
per-connection temporary staging table, then ``INSERT ... ON CONFLICT DO NOTHING`` into
``storage.readings`` in (series_id, time, arrival) order, so that of the same key repeated
within a batch the first to arrive is stored (and a key already stored keeps its value);
additive upserts of the rows that were new into the 1-minute and 1-hour aggregates, and an
upsert of the devices' first/last seen times. Writing the same batch twice stores nothing
new, which is what makes replays after a crash harmless: the pipeline commits Kafka
offsets only after this transaction has committed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import asyncpg

# (time in microseconds since the epoch, device_id, metric, value)
Point = tuple[int, str, str, float]

# Series ids remembered per sink; past this many the cache starts over (ids are re-read).
SERIES_CACHE_MAX = 500_000

# A new name for each new set of columns (``readings_staging``, then ``points_staging``
# without ``arrival``): pooled server connections outlive a deployment, and so do their
# temporary tables.
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS batch_points_staging (
    time_us   bigint           NOT NULL,
    series_id integer          NOT NULL,
    value     double precision NOT NULL,
    arrival   integer          NOT NULL
) ON COMMIT DELETE ROWS
"""

# Sorted, so concurrent writers creating overlapping series lock them in the same order.
_CREATE_SERIES = """
INSERT INTO storage.series (device_id, metric)
SELECT device_id, metric FROM unnest($1::text[], $2::text[]) AS u(device_id, metric)
ORDER BY device_id, metric
ON CONFLICT (device_id, metric) DO NOTHING
"""

# A statement of its own (a new snapshot): it sees series another writer just committed.
_SERIES_IDS = """
SELECT s.series_id, s.device_id, s.metric
FROM unnest($1::text[], $2::text[]) AS u(device_id, metric)
JOIN storage.series s USING (device_id, metric)
"""

# Folds the newly inserted points into one aggregate table: an additive upsert, so only
# points new to ``readings`` count, once each.
_FOLD = """{name} AS (
    INSERT INTO storage.{table} AS a (bucket, series_id, count, sum, min, max)
    SELECT time_bucket('{width}', time), series_id, count(*), sum(value), min(value), max(value)
    FROM inserted GROUP BY 2, 1 ORDER BY 2, 1
    ON CONFLICT (series_id, bucket) DO UPDATE
        SET count = a.count + excluded.count, sum = a.sum + excluded.sum,
            min = least(a.min, excluded.min), max = greatest(a.max, excluded.max)
)"""

_MERGE = """
WITH staged AS MATERIALIZED (
    SELECT timestamptz 'epoch' + time_us * interval '1 microsecond' AS time, series_id, value,
           arrival
    FROM batch_points_staging
), inserted AS MATERIALIZED (
    INSERT INTO storage.readings (time, series_id, value)
    SELECT time, series_id, value FROM staged ORDER BY series_id, time, arrival
    ON CONFLICT (series_id, time) DO NOTHING
    RETURNING time, series_id, value
), seen AS (
    INSERT INTO devices AS d (device_id, first_seen, last_seen)
    SELECT s.device_id, min(t.first_seen), max(t.last_seen)
    FROM (SELECT series_id, min(time) AS first_seen, max(time) AS last_seen
          FROM staged GROUP BY series_id) t
    JOIN storage.series s USING (series_id)
    GROUP BY s.device_id ORDER BY s.device_id
    ON CONFLICT (device_id) DO UPDATE
        SET first_seen = least(d.first_seen, excluded.first_seen),
            last_seen = greatest(d.last_seen, excluded.last_seen)
), {minute}, {hour}
SELECT count(*) FROM inserted
""".format(
    minute=_FOLD.format(name="minute", table="readings_1m", width="1 minute"),
    hour=_FOLD.format(name="hour", table="readings_1h", width="1 hour"),
)


_LAST_SEEN = """
SELECT device_id, (extract(epoch FROM last_seen) * 1000000)::bigint AS us
FROM devices WHERE device_id = ANY($1::text[])
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch did to the database."""

    points: int  # points in the batch
    inserted: int  # rows that were new to ``readings``


class TimescaleSink:
    """Writes batches of points; safe to call again with the same batch."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._series: dict[tuple[str, str], int] = {}

    async def write(self, points: Sequence[Point]) -> WriteResult:
        """Store ``points`` exactly once; raises asyncpg errors unchanged."""
        if not points:
            return WriteResult(points=0, inserted=0)
        async with self._pool.acquire() as conn:
            try:
                records = self._records(points)
            except KeyError:  # series not in the cache yet
                ids = self._series
                missing = {(d, m) for _, d, m, _ in points if (d, m) not in ids}
                if len(ids) + len(missing) > SERIES_CACHE_MAX:
                    self._series = {}
                    missing = {(d, m) for _, d, m, _ in points}
                await self._resolve(conn, missing)
                records = self._records(points)
            async with conn.transaction():
                await conn.execute(_STAGING)
                await conn.copy_records_to_table("batch_points_staging", records=records)
                inserted = await conn.fetchval(_MERGE)
        return WriteResult(points=len(points), inserted=inserted)

    async def last_seen(self, device_ids: Sequence[str]) -> dict[str, int]:
        """Each known device's newest stored reading time (microseconds since the epoch);
        devices never stored are left out."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_LAST_SEEN, list(device_ids))
        return {row["device_id"]: row["us"] for row in rows}

    def _records(self, points: Sequence[Point]) -> list[tuple[int, int, float, int]]:
        """The staging rows of ``points``; KeyError if a series is not cached."""
        ids = self._series
        return [(t, ids[d, m], v, i) for i, (t, d, m, v) in enumerate(points)]

    async def _resolve(self, conn: asyncpg.Connection, pairs: set[tuple[str, str]]) -> None:
        """Create the series not in the cache (committed at once) and cache their ids."""
        ordered = sorted(pairs)
        devices = [d for d, _ in ordered]
        metrics = [m for _, m in ordered]
        async with conn.transaction():
            await conn.execute(_CREATE_SERIES, devices, metrics)
        async with conn.transaction():
            rows = await conn.fetch(_SERIES_IDS, devices, metrics)
        for row in rows:
            self._series[(row["device_id"], row["metric"])] = row["series_id"]

"""Batched, idempotent writes of data points into the readings hypertable.

Storage layout (migration 0004): a point is stored as (time, series_id, value) in
``storage.readings``, where ``storage.series`` maps (device_id, metric) to a 4-byte id; the
``readings`` view gives it back as (time, device_id, metric, value). The sink resolves the
ids of a batch from its series cache (``sinks.series_cache``); ids it has not seen yet are
created (or looked up) in a short transaction of their own, committed before the batch's. A
series row is never deleted, so a cached id stays valid, and a batch that fails after
creating series leaves only dictionary entries behind.

A batch goes in one transaction, by two paths:

- **Fast**: points newer than their series' mark (an upper bound of its stored times,
  seeded from ``devices.last_seen``), the first of each key in the batch. They cannot be in
  the table unless another writer raced this one, so they are COPied straight into
  ``storage.readings``, and their 1-minute and 1-hour aggregates and their devices'
  first/last seen times, folded here, are upserted in one statement. The unique index on
  (series_id, time) is the guard: if any of them is there after all, the COPY fails, the
  transaction rolls back, the series' marks are read again and the whole batch is written
  the checked way.
- **Checked**: the other points (late, repeated or of series whose mark is unknown) are
  COPied into a per-connection temporary staging table, then ``INSERT ... ON CONFLICT DO
  NOTHING`` into ``storage.readings`` in (series_id, time, arrival) order, so that of the
  same key repeated within a batch the first to arrive is stored (and a key already stored
  keeps its value); additive upserts of the rows that were new into the aggregates, and an
  upsert of the devices' first/last seen times.

A key is never in both paths (its series and time decide), so either way only points new
to ``readings`` are stored and counted, once each. Writing the same batch twice stores
nothing new, which is what makes replays after a crash harmless: the pipeline commits Kafka
offsets only after this transaction has committed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import astuple, dataclass
from typing import Sequence

import asyncpg
import numpy as np

from sinks.batch_fold import Folded, first_of_each_key, fold, runs
from sinks.copy_binary import FLOAT8, INT4, INT8, copy_rows, timestamptz
from sinks.postgres import lift_decompression_limit
from sinks.series_cache import UNKNOWN, SeriesCache
from streams.settings import SinkSettings

log = logging.getLogger(__name__)

# (time in microseconds since the epoch, device_id, metric, value)
Point = tuple[int, str, str, float]

MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000

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

# Adds an aggregate row to the stored one of its (series, bucket): count and sum add, min
# and max widen. Both paths fold with it.
ADD_TO_BUCKET = """ON CONFLICT (series_id, bucket) DO UPDATE
        SET count = a.count + excluded.count, sum = a.sum + excluded.sum,
            min = least(a.min, excluded.min), max = greatest(a.max, excluded.max)"""

# Widens a device's first/last seen times. Both paths upsert devices with it.
_WIDEN_SEEN = """ON CONFLICT (device_id) DO UPDATE
        SET first_seen = least(d.first_seen, excluded.first_seen),
            last_seen = greatest(d.last_seen, excluded.last_seen)"""


def _fold_inserted(name: str, table: str, width: str) -> str:
    """The CTE folding the newly inserted points into one aggregate table: an additive
    upsert, so only points new to ``readings`` count, once each."""
    return f"""{name} AS (
    INSERT INTO storage.{table} AS a (bucket, series_id, count, sum, min, max)
    SELECT time_bucket('{width}', time), series_id, count(*), sum(value), min(value), max(value)
    FROM inserted GROUP BY 2, 1 ORDER BY 2, 1
    {ADD_TO_BUCKET}
)"""


_MERGE = f"""
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
    {_WIDEN_SEEN}
), {_fold_inserted("minute", "readings_1m", "1 minute")},
   {_fold_inserted("hour", "readings_1h", "1 hour")}
SELECT count(*) FROM inserted
"""


def _upsert_folded(name: str, table: str, first: int) -> str:
    """The CTE upserting aggregate rows folded by the sink, given as the six array
    parameters ``$first`` ... (bucket, series_id, count, sum, min, max)."""
    p = [f"${n}" for n in range(first, first + 6)]
    return f"""{name} AS (
    INSERT INTO storage.{table} AS a (bucket, series_id, count, sum, min, max)
    SELECT timestamptz 'epoch' + bucket * interval '1 microsecond', series_id, count, sum,
           min, max
    FROM unnest({p[0]}::bigint[], {p[1]}::integer[], {p[2]}::bigint[], {p[3]}::float8[],
                {p[4]}::float8[], {p[5]}::float8[]) AS u(bucket, series_id, count, sum, min, max)
    ORDER BY series_id, bucket
    {ADD_TO_BUCKET}
)"""


def upsert_devices(first: int) -> str:
    """The statement widening devices' first/last seen times, given as the three array
    parameters ``$first`` ... (device_id, first and last time in microseconds since the
    epoch), each device once."""
    p = [f"${n}" for n in range(first, first + 3)]
    return f"""INSERT INTO devices AS d (device_id, first_seen, last_seen)
SELECT device_id, timestamptz 'epoch' + first_us * interval '1 microsecond',
       timestamptz 'epoch' + last_us * interval '1 microsecond'
FROM unnest({p[0]}::text[], {p[1]}::bigint[], {p[2]}::bigint[]) AS u(device_id, first_us, last_us)
ORDER BY device_id
{_WIDEN_SEEN}"""


# The fast path's aggregate rows of buckets that may be stored already, and its devices, in
# the same lock order as ``_MERGE``'s.
_FAST_FOLD = f"""
WITH {_upsert_folded("minute", "readings_1m", 1)}, {_upsert_folded("hour", "readings_1h", 7)}
{upsert_devices(13)}
"""

_LAST_SEEN = """
SELECT device_id, (extract(epoch FROM last_seen) * 1000000)::bigint AS us
FROM devices WHERE device_id = ANY($1::text[])
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch did to the database."""

    points: int  # points in the batch
    inserted: int  # rows that were new to ``readings``
    checked: int = 0  # points written the checked way (all of them after a fallback)
    fallbacks: int = 0  # 1 when the fast path met a stored key and the batch was written again
    resolve_seconds: float = 0.0  # finding the series' ids and marks, creating new series
    copy_seconds: float = 0.0  # the COPYs of rows (fast, staged, aggregates of new buckets)
    merge_seconds: float = 0.0  # inserting checked rows, folding aggregates, the commit

    def __add__(self, other: "WriteResult") -> "WriteResult":
        return WriteResult(*(a + b for a, b in zip(astuple(self), astuple(other))))


class _Phases:
    """Seconds one write spends in each phase, across its attempts."""

    __slots__ = ("resolve", "copy", "merge")

    def __init__(self) -> None:
        self.resolve = self.copy = self.merge = 0.0

    def result(self, points: int, inserted: int, checked: int, fallbacks: int = 0
               ) -> WriteResult:
        return WriteResult(points, inserted, checked, fallbacks, self.resolve, self.copy,
                           self.merge)


@dataclass(frozen=True, slots=True)
class CacheState:
    """The sink's series cache: series held, its own estimate of its bytes, restarts."""

    series: int
    bytes: int
    resets: int


@dataclass(frozen=True, slots=True)
class _Columns:
    """A batch as numpy columns, in arrival order."""

    time_us: np.ndarray  # int64
    series_id: np.ndarray  # int32
    value: np.ndarray  # float64


@dataclass(frozen=True, slots=True)
class _FastFold:
    """The fast points' aggregate rows, those of buckets new to the table apart, and their
    devices' first and last times (``_FAST_FOLD``'s last three arguments)."""

    new_minutes: Folded
    new_hours: Folded
    minutes: Folded
    hours: Folded
    devices: list[list]


async def copy_aggregates(conn: asyncpg.Connection, table: str, rows: Folded,
                          count_type: np.dtype) -> None:
    """COPY aggregate rows into ``storage.{table}``: a unique violation if one of their
    (series, bucket) is stored already."""
    if len(rows.bucket):
        await conn.copy_to_table(
            table, schema_name="storage", format="binary",
            columns=["bucket", "series_id", "count", "sum", "min", "max"],
            source=copy_rows(timestamptz(rows.bucket), rows.series.astype(INT4),
                             rows.count.astype(count_type), rows.sum.astype(FLOAT8),
                             rows.min.astype(FLOAT8), rows.max.astype(FLOAT8)))


class TimescaleSink:
    """Writes batches of points; safe to call again with the same batch."""

    def __init__(self, pool: asyncpg.Pool, *,
                 cache_bytes: int = SinkSettings.series_cache_mb << 20) -> None:
        self._pool = pool
        self._cache = SeriesCache(cache_bytes)

    async def write(self, points: Sequence[Point]) -> WriteResult:
        """Store ``points`` exactly once; raises asyncpg errors unchanged."""
        if not points:
            return WriteResult(points=0, inserted=0)
        cache, phases = self._cache, _Phases()
        async with self._pool.acquire() as conn:
            started = time.perf_counter()
            slots = await self._slots(conn, points)
            phases.resolve += time.perf_counter() - started
            generation = cache.generation
            count = len(points)
            columns = _Columns(np.fromiter([p[0] for p in points], np.int64, count),
                               cache.ids[slots],
                               np.fromiter([p[3] for p in points], np.float64, count))
            marks = cache.marks[slots]
            fast = columns.time_us > marks
            try:
                inserted, checked = await self._write(conn, columns, fast, slots, marks, phases)
            except asyncpg.UniqueViolationError as exc:
                # Another writer (or an earlier attempt of this batch) stored some of them.
                cache.forget(generation, slots)
                log.info("batch of %d points met stored keys on the fast path (%s); "
                         "writing it the checked way", len(points), exc.detail or exc)
                fast[:] = False
                inserted, checked = await self._write(conn, columns, fast, slots, marks, phases)
                return phases.result(count, inserted, checked, fallbacks=1)
        cache.learn(generation, slots, columns.time_us)
        return phases.result(count, inserted, checked)

    def cache_state(self) -> CacheState:
        """The series cache now: a growing ``resets`` means ``SINK_SERIES_CACHE_MB`` is too
        small for the series the worker writes, and ids are read again batch after batch."""
        cache = self._cache
        return CacheState(len(cache), cache.nbytes, cache.resets)

    async def last_seen(self, device_ids: Sequence[str]) -> dict[str, int]:
        """Each known device's newest stored reading time (microseconds since the epoch);
        devices never stored are left out."""
        async with self._pool.acquire() as conn:
            return await self._last_seen(conn, device_ids)

    async def _write(self, conn: asyncpg.Connection, columns: _Columns, fast: np.ndarray,
                     slots: np.ndarray, marks: np.ndarray, phases: _Phases) -> tuple[int, int]:
        """One transaction: the ``fast`` points COPied straight in, the others checked;
        returns (rows inserted, points checked). ``marks``: each point's series' mark."""
        fast_rows = first_of_each_key(columns.series_id, columns.time_us, np.flatnonzero(fast))
        checked_rows = np.flatnonzero(~fast)
        inserted = 0
        async with conn.transaction():
            await lift_decompression_limit(conn)  # a replay's unique checks may decompress
            if len(fast_rows):
                started = time.perf_counter()
                await conn.copy_to_table(
                    "readings", schema_name="storage", columns=["time", "series_id", "value"],
                    format="binary", source=copy_rows(
                        timestamptz(columns.time_us[fast_rows]),
                        columns.series_id[fast_rows].astype(INT4),
                        columns.value[fast_rows].astype(FLOAT8)))
                folded = self._fold(columns, fast_rows, slots, marks)
                await copy_aggregates(conn, "readings_1m", folded.new_minutes, INT4)
                await copy_aggregates(conn, "readings_1h", folded.new_hours, INT8)
                copied = time.perf_counter()
                await conn.execute(_FAST_FOLD, *folded.minutes.arguments(),
                                   *folded.hours.arguments(), *folded.devices)
                phases.copy += copied - started
                phases.merge += time.perf_counter() - copied
                inserted += len(fast_rows)
            if len(checked_rows):
                started = time.perf_counter()
                await conn.execute(_STAGING)
                await conn.copy_to_table(
                    "batch_points_staging", format="binary", source=copy_rows(
                        columns.time_us[checked_rows].astype(INT8),
                        columns.series_id[checked_rows].astype(INT4),
                        columns.value[checked_rows].astype(FLOAT8),
                        checked_rows.astype(INT4)))
                copied = time.perf_counter()
                inserted += await conn.fetchval(_MERGE)
                phases.copy += copied - started
                phases.merge += time.perf_counter() - copied
            ending = time.perf_counter()
        phases.merge += time.perf_counter() - ending  # the commit
        return inserted, len(checked_rows)

    def _fold(self, columns: _Columns, rows: np.ndarray, slots: np.ndarray,
              marks: np.ndarray) -> _FastFold:
        """The aggregate rows and device spans of ``rows`` (sorted by series and time)."""
        series, time_us = columns.series_id[rows], columns.time_us[rows]
        minute = fold(series, time_us - time_us % MINUTE_US, columns.value[rows])
        hour = minute.refold(minute.bucket - minute.bucket % HOUR_US)
        # A bucket starting after its series' mark has no row yet: the mark bounds the
        # series' stored times, and an aggregate row exists only for stored points. If one
        # is there after all, its COPY fails like a stored point's, and the batch falls back.
        point_marks = marks[rows]
        new_minute = minute.bucket > point_marks[minute.first]
        new_hour = hour.bucket > point_marks[hour.first]
        # Each series' first and last time, then each device's.
        starts, ends = runs(series)
        seen: dict[str, list[int]] = {}
        for device, first, last in zip(self._cache.devices_of(slots[rows[starts]]),
                                       time_us[starts].tolist(), time_us[ends].tolist()):
            span = seen.get(device)
            if span is None:
                seen[device] = [first, last]
            else:
                span[0], span[1] = min(span[0], first), max(span[1], last)
        return _FastFold(minute.take(new_minute), hour.take(new_hour),
                         minute.take(~new_minute), hour.take(~new_hour),
                         [list(seen), [s[0] for s in seen.values()],
                          [s[1] for s in seen.values()]])

    async def _slots(self, conn: asyncpg.Connection, points: Sequence[Point]) -> np.ndarray:
        """The cache slots of the points' series, all with a known mark: series not cached
        are created, marks not known are read. The slots are valid until the caller's next
        await (the cache may start over meanwhile)."""
        cache = self._cache
        while True:
            try:
                slots = cache.slots(points)
            except KeyError:
                await self._resolve(conn, cache.missing(points))
                continue
            unknown = np.unique(slots[cache.marks[slots] == UNKNOWN])
            if not len(unknown):
                return slots
            generation = cache.generation
            newest = await self._last_seen(conn, list(dict.fromkeys(cache.devices_of(unknown))))
            if generation == cache.generation:
                cache.seed(unknown, newest)

    async def _resolve(self, conn: asyncpg.Connection, pairs: set[tuple[str, str]]) -> None:
        """Create the series not in the cache (committed at once) and cache their ids."""
        ordered = sorted(pairs)
        devices = [d for d, _ in ordered]
        metrics = [m for _, m in ordered]
        async with conn.transaction():
            await conn.execute(_CREATE_SERIES, devices, metrics)
        async with conn.transaction():
            rows = await conn.fetch(_SERIES_IDS, devices, metrics)
        self._cache.add((row["device_id"], row["metric"], row["series_id"]) for row in rows)

    @staticmethod
    async def _last_seen(conn: asyncpg.Connection, device_ids: Sequence[str]) -> dict[str, int]:
        rows = await conn.fetch(_LAST_SEEN, list(device_ids))
        return {row["device_id"]: row["us"] for row in rows}

"""Storage lifecycle of the readings: retention, index compaction, ANALYZE, compression.

One run (``run_maintenance``) does, in this order, each step in its own transaction:

1. **Global retention.** The horizon ``H`` is the longest raw retention in force:
   ``max(RETENTION_DAYS, max(devices.retention_days))``. Chunks of ``storage.readings``
   wholly older than ``H`` are dropped (``drop_chunks``). Nothing any device must keep is
   older than ``H``, so dropping whole chunks there is safe by construction. With the
   Timescale license the same horizon is also installed as ``add_retention_policy`` (kept
   equal to ``H`` on every run), so it applies even while no worker runs; not with
   ``ARCHIVE_DIR`` set (see below): then that policy is removed, as it would drop chunks
   unarchived, and raw retention runs from the workers only.
2. **Aggregate retention.** ``readings_1m`` / ``readings_1h`` chunks older than
   ``AGGREGATE_1M_RETENTION_DAYS`` / ``AGGREGATE_1H_RETENTION_DAYS`` are dropped (policies
   too under the Timescale license). Aggregates do not follow per-device overrides.
3. **Trim.** When some device keeps its readings longer than ``RETENTION_DAYS`` (so
   ``H > RETENTION_DAYS``), a raw chunk wholly older than ``RETENTION_DAYS`` is rewritten
   once to hold only the rows of those devices: in one transaction the chunk is locked, its
   keepers copied aside, the chunk truncated and the keepers put back (cost proportional to
   what is kept, no dead rows, no bloat); a chunk with no keeper is dropped. A compressed
   chunk (Timescale license) is trimmed with a DELETE on the segment-by column, which
   removes whole compressed batches.

   **Cold archive.** With ``ARCHIVE_DIR`` set, every raw chunk steps 1 and 3 are about to
   drop or trim is first exported whole to a Parquet file (``sinks/cold_archive.py``), in
   the same transaction, the chunk locked against writes; the rows go only after the file
   is verified. A chunk whose export fails is kept (its error logged with the chunk's name
   and listed in the report) and the run goes on; the next run tries again.
4. **Per-device deletes.** For each ``devices.retention_days`` value shorter than ``H``:
   ``DELETE`` the rows of those devices older than it, by series id through the
   ``(series_id, time)`` index (index probes, no chunk scan). Devices with no override
   (``RETENTION_DAYS``) are covered by steps 1 and 3 at chunk granularity, like
   ``drop_chunks`` itself; overrides are exact to the row.
5. **Index compaction.** A raw chunk's unique index pages fill only partly while the
   chunk is written (every series appends in the middle of the key space). Once a chunk is
   closed (its end ``CLOSED_AFTER`` in the past) its index is rebuilt packed
   (``fillfactor = 100``, ``REINDEX INDEX``), once (sizes: docs/storage.md#storage-layout).
   Not ``CONCURRENTLY``, which cannot run in the SECURITY DEFINER function the workers' role
   calls: the chunk's late writes and the queries planned on it wait for the rebuild.
   Closed ``readings_1h`` chunks (7 days) are CLUSTERed once on (series_id, bucket), so a
   long-range read of one device touches few pages.
6. **ANALYZE** of the hypertables (``full``) or of the chunks changed since they were last
   analyzed, and of ``storage.series`` and ``devices``.
7. **Compression.** ``SHOW timescaledb.license`` decides: ``timescale`` -> compression on
   the three hypertables (segment by ``series_id``, which is exactly (device_id, metric);
   order by time DESC) with ``add_compression_policy`` at ``COMPRESS_AFTER_DAYS``, kept
   equal to the setting; ``apache`` -> nothing, said once in the log and in the report.

Runs are serialised by a lease row (``storage.maintenance_lease``) and recorded in
``storage.maintenance_runs``; ``maintain`` wraps all that for the leader's timer and the
``maintenance`` command. The report's compression state is ``sinks.compression_state``'s,
as ``/pipeline/db`` shows it too.

The workers' role owns no table: every step that needs an owner's right (drop_chunks,
policies, TRUNCATE of a trimmed chunk, REINDEX, CLUSTER, ANALYZE) calls a SECURITY DEFINER
function of migration 0008, which refuses anything but the storage hypertables and their
chunks. Deletes and the bookkeeping tables are plain DML, granted to the workers' role.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from sinks.compression_state import read_compression_state
from sinks.postgres import connect_kwargs, lift_decompression_limit
from streams.settings import Settings

if TYPE_CHECKING:
    from sinks.cold_archive import ArchivedChunk

log = logging.getLogger(__name__)

RAW = "storage.readings"
MINUTE = "storage.readings_1m"
HOUR = "storage.readings_1h"
HYPERTABLES = (RAW, MINUTE, HOUR)
TIME_COLUMN = {RAW: "time", MINUTE: "bucket", HOUR: "bucket"}

# A raw chunk whose end is this far in the past is closed: its index gets packed.
CLOSED_AFTER = timedelta(hours=6)
# At most this many indexes are rebuilt, and readings_1h chunks clustered, per run (a
# backlog clears over the next runs).
COMPACTIONS_PER_RUN = 24
CLUSTERS_PER_RUN = 8
# Series ids per DELETE of the per-device step (keeps every plan an index probe).
DELETE_IDS_PER_STATEMENT = 1000
LEASE_TTL = timedelta(hours=1)
RUNS_KEPT = 200
APACHE_NOTE = (
    "TimescaleDB is the Apache-licensed build: compression and retention policies are "
    "unavailable; raw chunks stay uncompressed and retention runs from the workers "
    "(drop_chunks + per-device deletes)"
)

_apache_logged = False


@dataclass(frozen=True)
class RetentionSettings:
    """The retention and compression knobs (days), and where raw chunks are archived."""

    raw_days: int = 90
    minute_days: int = 365
    hour_days: int = 1825
    compress_after_days: int = 7
    archive_dir: str = ""  # empty: no archive

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetentionSettings":
        return cls(
            raw_days=settings.storage.retention_days,
            minute_days=settings.storage.aggregate_1m_retention_days,
            hour_days=settings.storage.aggregate_1h_retention_days,
            compress_after_days=settings.storage.compress_after_days,
            archive_dir=settings.storage.archive_dir,
        )

    def aggregate_days(self, table: str) -> int:
        return self.minute_days if table == MINUTE else self.hour_days


@dataclass(frozen=True)
class RetentionPlan:
    """What retention has to do, given the default and the per-device overrides."""

    default_days: int
    overrides: tuple[int, ...]  # distinct devices.retention_days values

    @property
    def horizon_days(self) -> int:
        """The longest raw retention in force: whole chunks older than this go."""
        return max((self.default_days, *self.overrides))

    @property
    def trims(self) -> bool:
        """True when some device keeps readings past the default retention."""
        return self.horizon_days > self.default_days

    @property
    def delete_days(self) -> list[int]:
        """Override values whose devices need row deletes (shorter than the horizon)."""
        return sorted(d for d in set(self.overrides) if d < self.horizon_days)


@dataclass
class MaintenanceReport:
    """What a run did; ``lines()`` is what the ``maintenance`` command prints."""

    license: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    horizon_days: int | None = None
    dropped_chunks: dict[str, int] = field(default_factory=dict)
    trimmed_chunks: int = 0
    trimmed_rows_kept: int = 0
    emptied_chunks_dropped: int = 0
    archive_dir: str | None = None
    archived_chunks: int = 0  # files verified this run (written or already there)
    archived_rows: int = 0
    archived_bytes: int = 0
    archive_failures: dict[str, str] = field(default_factory=dict)  # chunk -> error; kept
    deleted_rows: dict[str, int] = field(default_factory=dict)  # "7 days" -> rows
    compacted_indexes: int = 0
    compaction_backlog: int = 0
    clustered_hourly_chunks: int = 0
    clustering_backlog: int = 0
    analyzed: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    compression: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(asdict(self)))

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{t}: {n}" for t, n in self.dropped_chunks.items()) or "none"
        deleted = ", ".join(f"{k}: {n}" for k, n in self.deleted_rows.items()) or "none"
        lines = [
            f"timescaledb license: {self.license}",
            f"raw retention horizon: {self.horizon_days} days (longest retention in force)",
            f"chunks dropped: {dropped}",
            f"chunks trimmed to long-retention devices: {self.trimmed_chunks} "
            f"({self.trimmed_rows_kept} rows kept, "
            f"{self.emptied_chunks_dropped} empty chunks dropped)",
            f"rows deleted for per-device retention: {deleted}",
        ]
        if self.archive_dir:
            lines.append(
                f"chunks archived to Parquet in {self.archive_dir}: {self.archived_chunks} "
                f"({self.archived_rows} rows, {self.archived_bytes} bytes)")
            lines += [f"archive failed, chunk kept: {chunk}: {error}"
                      for chunk, error in self.archive_failures.items()]
        lines += [
            f"chunk indexes compacted: {self.compacted_indexes}" + (
                f" ({self.compaction_backlog} left for the next runs)"
                if self.compaction_backlog else ""),
            f"closed readings_1h chunks clustered: {self.clustered_hourly_chunks}" + (
                f" ({self.clustering_backlog} left for the next runs)"
                if self.clustering_backlog else ""),
            f"analyzed: {', '.join(self.analyzed) or 'nothing changed'}",
            f"compression: {self.compression.get('state', 'unknown')}",
        ]
        lines += [f"policy: {p}" for p in self.policies]
        lines += [f"note: {n}" for n in self.notes]
        total = sum(self.seconds.values())
        steps = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        lines.append(f"took {total:.2f}s ({steps})")
        return lines


# ------------------------------------------------------------------------------ license

def _note_apache_once() -> None:
    global _apache_logged
    if not _apache_logged:
        _apache_logged = True
        log.warning(APACHE_NOTE)


# ------------------------------------------------------------------------------ policies

async def _policy_interval(conn: asyncpg.Connection, proc: str, key: str,
                           table: str) -> tuple[bool, timedelta | None]:
    """Whether ``table`` has a ``proc`` policy, and its ``key`` interval."""
    schema, name = table.split(".")
    row = await conn.fetchrow(
        "SELECT j.job_id, (j.config->>$4)::interval AS value FROM timescaledb_information.jobs j "
        "WHERE j.proc_name = $1 AND j.hypertable_schema = $2 AND j.hypertable_name = $3 "
        "LIMIT 1", proc, schema, name, key)
    return (row is not None, row["value"] if row else None)


async def ensure_retention_policy(conn: asyncpg.Connection, table: str, days: int) -> str | None:
    """Timescale license: make ``table``'s retention policy drop after ``days``; what changed."""
    want = timedelta(days=days)
    async with conn.transaction():
        exists, current = await _policy_interval(conn, "policy_retention", "drop_after", table)
        if exists and current == want:
            return None
        await conn.execute("SELECT storage.replace_retention_policy($1::regclass, $2::interval)",
                           table, want)
    return f"{table}: retention policy drop_after {days} days" + (
        f" (was {current})" if exists else "")


async def remove_retention_policy(conn: asyncpg.Connection, table: str) -> str | None:
    """Timescale license: remove ``table``'s retention policy if it has one; what changed."""
    async with conn.transaction():
        exists, current = await _policy_interval(conn, "policy_retention", "drop_after", table)
        if not exists:
            return None
        await conn.execute("SELECT storage.replace_retention_policy($1::regclass, NULL)", table)
    return (f"{table}: retention policy (drop_after {current}) removed: with ARCHIVE_DIR "
            f"set, chunks are archived before maintenance drops them")


async def ensure_compression(conn: asyncpg.Connection, table: str, days: int) -> list[str]:
    """Timescale license: compression on ``table`` with a policy at ``days``; what changed."""
    schema, name = table.split(".")
    done = []
    want = timedelta(days=days)
    async with conn.transaction():
        enabled = await conn.fetchval(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = $1 AND hypertable_name = $2", schema, name)
        if not enabled:
            done.append(f"{table}: compression enabled (segment by series_id, "
                        f"order by {TIME_COLUMN[table]} DESC)")
        exists, current = await _policy_interval(
            conn, "policy_compression", "compress_after", table)
        if not (exists and current == want):
            done.append(f"{table}: compression policy compress_after {days} days"
                        + (f" (was {current})" if exists else ""))
        if done:
            await conn.execute(
                "SELECT storage.replace_compression_policy($1::regclass, $2::interval)",
                table, want)
    return done


# ------------------------------------------------------------------------------ retention

async def retention_plan(conn: asyncpg.Connection, default_days: int) -> RetentionPlan:
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT DISTINCT retention_days FROM devices WHERE retention_days IS NOT NULL")
    return RetentionPlan(default_days, tuple(sorted(r["retention_days"] for r in rows)))


async def _drop_chunks(conn: asyncpg.Connection, table: str, older_than: datetime) -> int:
    async with conn.transaction():
        dropped = await conn.fetch(
            "SELECT storage.drop_chunks($1::regclass, $2::timestamptz)", table, older_than)
    return len(dropped)


async def _drop_raw_chunk(conn: asyncpg.Connection, chunk: str, range_start: datetime,
                          range_end: datetime) -> None:
    """Drop one raw chunk and its bookkeeping, in the caller's transaction."""
    await conn.execute("SELECT storage.drop_chunks($1::regclass, $2::timestamptz, $3::timestamptz)",
                       RAW, range_end, range_start)
    await conn.execute("DELETE FROM storage.chunk_maintenance WHERE chunk = $1", chunk)


async def _archive(conn: asyncpg.Connection, chunk: str, range_start: datetime,
                   range_end: datetime, directory: Path) -> ArchivedChunk:
    """``archive_chunk``, imported here: pyarrow, which costs a worker tens of MB of
    memory, is loaded only where ARCHIVE_DIR is set."""
    from sinks.cold_archive import Chunk, archive_chunk
    return await archive_chunk(conn, Chunk(chunk, range_start, range_end), directory)


def _count_archived(report: MaintenanceReport, archived: ArchivedChunk) -> None:
    report.archived_chunks += 1
    report.archived_rows += archived.rows
    report.archived_bytes += archived.bytes


def _archive_failed(report: MaintenanceReport, chunk: str, exc: Exception) -> None:
    log.error("archive of raw chunk %s failed, the chunk is kept: %s: %s", chunk,
              type(exc).__name__, exc)
    report.archive_failures[chunk] = f"{type(exc).__name__}: {exc}"


# Exactly the chunks ``drop_chunks(older_than => $1)`` drops.
_RAW_CHUNKS_TO_DROP = """
SELECT format('%I.%I', c.chunk_schema, c.chunk_name) AS chunk, c.range_start, c.range_end
FROM show_chunks('storage.readings'::regclass, older_than => $1::timestamptz) AS s(chunk)
JOIN timescaledb_information.chunks c
  ON s.chunk = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass
ORDER BY c.range_start
"""


async def _archive_and_drop(conn: asyncpg.Connection, older_than: datetime, archive: Path,
                            report: MaintenanceReport) -> int:
    """Step 1 with ARCHIVE_DIR: each chunk archived and dropped in one transaction; a chunk
    whose archive fails stays. Returns the chunks dropped."""
    async with conn.transaction():
        rows = await conn.fetch(_RAW_CHUNKS_TO_DROP, older_than)
    dropped = 0
    for chunk, range_start, range_end in rows:
        try:
            async with conn.transaction():
                archived = await _archive(conn, chunk, range_start, range_end, archive)
                await _drop_raw_chunk(conn, chunk, range_start, range_end)
        except Exception as exc:  # noqa: BLE001 - that chunk stays; the others go on
            _archive_failed(report, chunk, exc)
            continue
        _count_archived(report, archived)
        dropped += 1
    return dropped


_CHUNKS_TO_TRIM = """
SELECT format('%I.%I', c.chunk_schema, c.chunk_name) AS chunk, c.is_compressed,
       c.range_start, c.range_end
FROM timescaledb_information.chunks c
LEFT JOIN storage.chunk_maintenance m ON m.chunk = format('%I.%I', c.chunk_schema, c.chunk_name)
WHERE c.hypertable_schema = 'storage' AND c.hypertable_name = 'readings'
  AND c.range_end <= $1 AND m.trimmed_at IS NULL
ORDER BY c.range_start
"""

_LONG_SERIES = """
SELECT s.series_id FROM storage.series s JOIN devices d USING (device_id)
WHERE d.retention_days > $1
"""


_CHUNK_COMPRESSED = """
SELECT is_compressed FROM timescaledb_information.chunks
WHERE format('%I.%I', chunk_schema, chunk_name) = $1
"""


async def _trim_chunk(conn: asyncpg.Connection, chunk: str, compressed: bool,
                      range_start: datetime, range_end: datetime, default_days: int,
                      archive: Path | None) -> tuple[int, bool, ArchivedChunk | None]:
    """Keep only the rows of devices with a retention longer than the default.

    With ``archive``, the whole chunk is archived first, in the same transaction. Returns
    (rows kept, chunk dropped because nothing was kept, the archive).
    """
    async with conn.transaction():
        # Archived before anything is removed; the chunk stays locked against writes.
        archived = (await _archive(conn, chunk, range_start, range_end, archive)
                    if archive else None)
        if not compressed:
            # Locked first: the copy below then sees every committed row, and nothing is
            # written to the chunk until the rewrite commits. The compression policy may
            # have compressed the chunk since it was listed: its rows are then no longer in
            # the chunk's own table, and copying from that would keep nothing.
            await conn.execute(f"LOCK TABLE {chunk} IN ACCESS EXCLUSIVE MODE")
            compressed = bool(await conn.fetchval(_CHUNK_COMPRESSED, chunk))
        keep = [r["series_id"] for r in await conn.fetch(_LONG_SERIES, default_days)]
        if compressed:
            # Filtered on the segment-by column: whole compressed batches go.
            await lift_decompression_limit(conn)
            await conn.execute(
                f"DELETE FROM {RAW} WHERE time >= $1 AND time < $2 "
                f"AND NOT (series_id = ANY($3::integer[]))", range_start, range_end, keep)
            kept = await conn.fetchval(
                f"SELECT count(*) FROM {RAW} WHERE time >= $1 AND time < $2",
                range_start, range_end)
        else:  # keepers copied aside, the chunk truncated, the keepers put back
            kept = await conn.fetchval("SELECT storage.trim_chunk($1::regclass, $2::integer[])",
                                       chunk, keep)
        if kept == 0:
            await _drop_raw_chunk(conn, chunk, range_start, range_end)
            return 0, True, archived
        await conn.execute(
            "INSERT INTO storage.chunk_maintenance (chunk, trimmed_at) VALUES ($1, now()) "
            "ON CONFLICT (chunk) DO UPDATE SET trimmed_at = now()", chunk)
        return kept, False, archived


async def _delete_for_override(conn: asyncpg.Connection, days: int, cutoff: datetime) -> int:
    """Delete the rows older than ``cutoff`` of the devices whose retention is ``days``."""
    async with conn.transaction():
        ids = await conn.fetchval(
            "SELECT array_agg(s.series_id ORDER BY s.series_id) FROM storage.series s "
            "JOIN devices d USING (device_id) WHERE d.retention_days = $1", days)
    deleted = 0
    for i in range(0, len(ids or ()), DELETE_IDS_PER_STATEMENT):
        part = ids[i:i + DELETE_IDS_PER_STATEMENT]
        async with conn.transaction():
            await lift_decompression_limit(conn)
            status = await conn.execute(
                f"DELETE FROM {RAW} WHERE series_id = ANY($1::integer[]) AND time < $2",
                part, cutoff)
        deleted += int(status.split()[-1])
    return deleted


# ------------------------------------------------------------------------------ compaction

_CHUNKS_TO_COMPACT = """
SELECT format('%I.%I', c.chunk_schema, c.chunk_name) AS chunk,
       format('%I.%I', n.nspname, ic.relname) AS index
FROM timescaledb_information.chunks c
JOIN pg_index i ON i.indrelid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
LEFT JOIN storage.chunk_maintenance m ON m.chunk = format('%I.%I', c.chunk_schema, c.chunk_name)
WHERE c.hypertable_schema = 'storage' AND c.hypertable_name = 'readings'
  AND NOT c.is_compressed AND c.range_end <= $1 AND m.compacted_at IS NULL
  AND i.indisunique AND i.indisvalid
ORDER BY c.range_start DESC
"""

async def _compact_indexes(conn: asyncpg.Connection, closed_before: datetime,
                           report: MaintenanceReport) -> None:
    async with conn.transaction():
        todo = await conn.fetch(_CHUNKS_TO_COMPACT, closed_before)
    for row in todo[:COMPACTIONS_PER_RUN]:
        async with conn.transaction():
            # false: compressed since it was listed, so there is no index left to compact
            if not await conn.fetchval("SELECT storage.compact_index($1::regclass)",
                                       row["index"]):
                continue
            await conn.execute(
                "INSERT INTO storage.chunk_maintenance (chunk, compacted_at) VALUES ($1, now()) "
                "ON CONFLICT (chunk) DO UPDATE SET compacted_at = now()", row["chunk"])
        report.compacted_indexes += 1
    report.compaction_backlog = max(0, len(todo) - COMPACTIONS_PER_RUN)


# A closed readings_1h chunk not clustered yet (CLUSTER marks its index indisclustered).
_HOURLY_TO_CLUSTER = """
SELECT format('%I.%I', c.chunk_schema, c.chunk_name) AS chunk,
       format('%I.%I', n.nspname, ic.relname) AS index
FROM timescaledb_information.chunks c
JOIN pg_index i ON i.indrelid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE c.hypertable_schema = 'storage' AND c.hypertable_name = 'readings_1h'
  AND NOT c.is_compressed AND c.range_end <= $1 AND i.indisunique AND i.indisvalid
  AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = i.indrelid AND x.indisclustered)
ORDER BY c.range_start DESC
"""


async def _cluster_hourly(conn: asyncpg.Connection, closed_before: datetime,
                          report: MaintenanceReport) -> None:
    """CLUSTER closed readings_1h chunks on (series_id, bucket), once each.

    The chunk is locked (reads and late upserts of that week wait) for the rewrite
    (docs/storage.md#maintenance). Compressed chunks (Timescale license) are already
    ordered by series and bucket.
    """
    async with conn.transaction():
        todo = await conn.fetch(_HOURLY_TO_CLUSTER, closed_before)
    for row in todo[:CLUSTERS_PER_RUN]:
        async with conn.transaction():
            await conn.execute("SELECT storage.cluster_chunk($1::regclass, $2::regclass)",
                               row["chunk"], row["index"])
        report.clustered_hourly_chunks += 1
    report.clustering_backlog = max(0, len(todo) - CLUSTERS_PER_RUN)


# ------------------------------------------------------------------------------ analyze

_CHANGED_CHUNKS = """
SELECT format('%I.%I', c.chunk_schema, c.chunk_name) AS chunk
FROM timescaledb_information.chunks c
JOIN pg_stat_user_tables t ON t.relid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass
WHERE c.hypertable_schema = 'storage'
  AND (coalesce(t.last_analyze, t.last_autoanalyze) IS NULL
       OR t.n_mod_since_analyze > 0.05 * greatest(t.n_live_tup, 1000))
ORDER BY c.range_start DESC
"""


async def _analyze(conn: asyncpg.Connection, full: bool) -> list[str]:
    if full:
        targets = [*HYPERTABLES, "storage.series", "devices"]
        for target in targets:
            await conn.execute("SELECT storage.analyze($1::regclass)", target)
        return targets
    async with conn.transaction():
        chunks = [r["chunk"] for r in await conn.fetch(_CHANGED_CHUNKS)]
    for target in [*chunks, "storage.series", "devices"]:
        await conn.execute("SELECT storage.analyze($1::regclass)", target)
    return [f"{len(chunks)} changed chunks", "storage.series", "devices"]


# ------------------------------------------------------------------------------ the run

class LeaseTaken(RuntimeError):
    """Another run holds the maintenance lease."""


async def run_maintenance(conn: asyncpg.Connection, retention: RetentionSettings, *,
                          full_analyze: bool = True,
                          renew: Any = None) -> MaintenanceReport:
    """One maintenance run on ``conn`` (see the module docstring); returns its report.

    ``renew`` (an async callable) is awaited between steps to keep the lease.
    """
    report = MaintenanceReport()

    async def step(name: str, started: float) -> None:
        report.seconds[name] = round(time.perf_counter() - started, 3)
        if renew is not None and not await renew():
            raise LeaseTaken(f"maintenance lease lost after the {name} step")

    t = time.perf_counter()
    async with conn.transaction():
        now, license_ = await conn.fetchrow(
            "SELECT now(), current_setting('timescaledb.license', true)")
    report.started_at, report.license = now, license_
    tsl = license_ == "timescale"
    if not tsl:
        _note_apache_once()
        report.notes.append(APACHE_NOTE)

    plan = await retention_plan(conn, retention.raw_days)
    report.horizon_days = plan.horizon_days
    archive = Path(retention.archive_dir) if retention.archive_dir else None
    report.archive_dir = retention.archive_dir or None
    if tsl:
        # A policy would drop raw chunks without archiving them.
        changed = (await remove_retention_policy(conn, RAW) if archive
                   else await ensure_retention_policy(conn, RAW, plan.horizon_days))
        report.policies += [changed] if changed else []
    horizon = now - timedelta(days=plan.horizon_days)
    report.dropped_chunks[RAW] = (await _archive_and_drop(conn, horizon, archive, report)
                                  if archive else await _drop_chunks(conn, RAW, horizon))
    await step("raw retention", t)

    t = time.perf_counter()
    for table in (MINUTE, HOUR):
        days = retention.aggregate_days(table)
        if tsl:
            changed = await ensure_retention_policy(conn, table, days)
            report.policies += [changed] if changed else []
        report.dropped_chunks[table] = await _drop_chunks(conn, table, now - timedelta(days=days))
    await step("aggregate retention", t)

    t = time.perf_counter()
    if plan.trims:
        async with conn.transaction():
            chunks = await conn.fetch(
                _CHUNKS_TO_TRIM, now - timedelta(days=retention.raw_days))
        for row in chunks:
            try:
                kept, dropped, archived = await _trim_chunk(
                    conn, row["chunk"], row["is_compressed"], row["range_start"],
                    row["range_end"], retention.raw_days, archive)
            except Exception as exc:  # noqa: BLE001 - with an archive: that chunk stays
                if archive is None:
                    raise
                _archive_failed(report, row["chunk"], exc)
                continue
            if archived is not None:
                _count_archived(report, archived)
            report.trimmed_chunks += 1
            report.trimmed_rows_kept += kept
            report.emptied_chunks_dropped += dropped
    await step("trim", t)

    t = time.perf_counter()
    for days in plan.delete_days:
        deleted = await _delete_for_override(conn, days, now - timedelta(days=days))
        report.deleted_rows[f"{days} days"] = deleted
    await step("per-device deletes", t)

    t = time.perf_counter()
    await _compact_indexes(conn, now - CLOSED_AFTER, report)
    await step("index compaction", t)

    t = time.perf_counter()
    await _cluster_hourly(conn, now - CLOSED_AFTER, report)
    await step("hourly clustering", t)

    t = time.perf_counter()
    report.analyzed = await _analyze(conn, full_analyze)
    await step("analyze", t)

    t = time.perf_counter()
    if tsl:
        for table in HYPERTABLES:
            report.policies += await ensure_compression(conn, table, retention.compress_after_days)
    report.compression = (await read_compression_state(conn)).as_maintenance_report()
    await step("compression", t)

    async with conn.transaction():
        report.finished_at = await conn.fetchval("SELECT clock_timestamp()")
    return report


# ------------------------------------------------------------------------------ lease, runs

_ACQUIRE = """
INSERT INTO storage.maintenance_lease AS l (singleton, holder, expires_at)
VALUES (true, $1, now() + $2::interval)
ON CONFLICT (singleton) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE l.expires_at < now() OR l.holder = excluded.holder
RETURNING holder
"""


async def acquire_lease(conn: asyncpg.Connection, holder: str,
                        ttl: timedelta = LEASE_TTL) -> bool:
    """Take (or renew) the maintenance lease; False while another holder has it."""
    async with conn.transaction():
        return await conn.fetchval(_ACQUIRE, holder, ttl) is not None


async def release_lease(conn: asyncpg.Connection, holder: str) -> None:
    async with conn.transaction():
        await conn.execute(
            "UPDATE storage.maintenance_lease SET expires_at = now() WHERE holder = $1", holder)


async def lease_holder(conn: asyncpg.Connection) -> tuple[str, datetime] | None:
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT holder, expires_at FROM storage.maintenance_lease WHERE expires_at > now()")
    return (row["holder"], row["expires_at"]) if row else None


async def last_run_age(conn: asyncpg.Connection) -> timedelta | None:
    """How long ago the newest recorded run finished; None when none was recorded."""
    async with conn.transaction():
        return await conn.fetchval(
            "SELECT now() - max(finished_at) FROM storage.maintenance_runs")


async def record_run(conn: asyncpg.Connection, holder: str, report: MaintenanceReport) -> None:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO storage.maintenance_runs (holder, started_at, finished_at, report) "
            "VALUES ($1, $2, $3, $4::jsonb)",
            holder, report.started_at, report.finished_at,
            orjson.dumps(report.as_json()).decode())
        await conn.execute(
            "DELETE FROM storage.maintenance_runs WHERE id <= "
            "(SELECT max(id) FROM storage.maintenance_runs) - $1", RUNS_KEPT)


async def maintenance_connection(settings: Settings) -> asyncpg.Connection:
    """A connection without the client-side statement timeout (steps may take minutes)."""
    return await asyncpg.connect(**{**connect_kwargs(settings), "command_timeout": None})


async def maintain(settings: Settings, holder: str, *, due_after: timedelta | None = None,
                   full_analyze: bool = True, wait: float = 0.0,
                   conn: asyncpg.Connection | None = None) -> MaintenanceReport | None:
    """Take the lease, run, record, give the lease back.

    With ``due_after``, nothing happens (None) when a run finished less than that long
    ago. Raises ``LeaseTaken`` when another holder keeps the lease for ``wait`` seconds.
    """
    own = conn is None
    conn = conn or await maintenance_connection(settings)
    try:
        if due_after is not None:
            age = await last_run_age(conn)
            if age is not None and age < due_after:
                return None
        deadline = time.monotonic() + wait
        while not await acquire_lease(conn, holder):
            if time.monotonic() >= deadline:
                taken = await lease_holder(conn)
                raise LeaseTaken(
                    f"another maintenance run holds the lease ({taken[0]} until {taken[1]})"
                    if taken else "another maintenance run holds the lease")
            await asyncio.sleep(1.0)
        try:
            if due_after is not None:  # another holder may have run meanwhile
                age = await last_run_age(conn)
                if age is not None and age < due_after:
                    return None
            report = await run_maintenance(
                conn, RetentionSettings.from_settings(settings), full_analyze=full_analyze,
                renew=lambda: acquire_lease(conn, holder))
            await record_run(conn, holder, report)
            return report
        finally:
            await release_lease(conn, holder)
    finally:
        if own:
            await conn.close()

"""Cold archive: one raw chunk of ``storage.readings`` exported to a Parquet file, verified.

Maintenance (``sinks/maintenance.py``) calls ``archive_chunk`` when ``ARCHIVE_DIR`` is set,
before it drops or trims a raw chunk, and removes rows only once the file is verified.

The file: ``<ARCHIVE_DIR>/readings_<range_start>_<range_end>_<chunk>.parquet``, times in
UTC as ``20260901T000000Z``, ``<chunk>`` the chunk table's name (``_hyper_1_42_chunk``).
Columns ``device_id`` (string), ``metric`` (string), ``time`` (timestamp, microseconds,
UTC), ``value`` (float64); rows in (series, time) order, zstd, time delta-encoded and the
other columns dictionary-encoded, row groups of ``ROW_GROUP_ROWS``. Those encodings fit
sensor series: a series' times are near-constant deltas and its values repeat (sizes, and
the encodings compared: docs/performance.md#parquet-cold-archive).

How, inside the caller's transaction: the chunk is locked against writes (``SHARE``), so
the row count, the rows exported and whatever the caller removes afterwards are the same
rows. The rows stream out with a binary ``COPY`` (fixed 34-byte rows, parsed with numpy)
and go to the file a row group at a time: memory is bounded by one row group, whatever the
chunk holds. The file is written under a hidden temporary name in the same directory,
fsynced, verified (footer readable, the schema, row count == rows copied == ``count(*)``),
then renamed over the final name and the directory fsynced: a file under the final name is
always complete. Compressed chunks (Timescale license) read the same way.

Re-runs are idempotent: a file already there that reads back with the schema and at least
the chunk's row count is kept. At least, not exactly: only chunks wholly past
``RETENTION_DAYS`` are archived, and the pipeline refuses readings that old, so such a
chunk only ever loses rows (a trim, per-device deletes) after its archive was written.
Anything else (no file, a truncated or unreadable one, another schema, fewer rows) is
written again. One ``ARCHIVE_DIR`` belongs to one database (chunk names repeat across
databases).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sinks.copy_binary import (
    FLOAT8, HEADER, INT4, PG_EPOCH_US, SIGNATURE, TIMESTAMPTZ, TRAILER, row_dtype,
)

log = logging.getLogger(__name__)

RAW = "storage.readings"
SCHEMA = pa.schema([
    ("device_id", pa.string()),
    ("metric", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("value", pa.float64()),
])
# Rows per row group: ~10 MB of arrays per group in memory while it is written.
ROW_GROUP_ROWS = 250_000
_WRITER_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": ["device_id", "metric", "value"],
    "column_encoding": {"time": "DELTA_BINARY_PACKED"},
}

# PostgreSQL binary COPY (sinks.copy_binary): a header, then per row a field count and
# each field as (length, bytes); -1 as field count ends it. All three columns are NOT
# NULL and fixed-width, so every row is exactly _ROW.itemsize bytes.
_HEADER = len(HEADER)
_ROW = row_dtype({"time": TIMESTAMPTZ, "series_id": INT4, "value": FLOAT8})


class ArchiveError(RuntimeError):
    """A chunk could not be exported, or its file did not verify."""


@dataclass(frozen=True)
class Chunk:
    """A raw chunk: its schema-qualified table name and its time range [start, end)."""

    name: str
    range_start: datetime
    range_end: datetime


@dataclass(frozen=True)
class ArchivedChunk:
    """A verified archive of a chunk; ``reused`` when the file was already there."""

    path: Path
    rows: int
    bytes: int
    reused: bool


def archive_path(directory: Path, chunk: Chunk) -> Path:
    """Where ``chunk``'s file goes: its time range and table name make the name unique."""
    def stamp(moment: datetime) -> str:
        return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    table = chunk.name.rpartition(".")[2].strip('"')
    start, end = stamp(chunk.range_start), stamp(chunk.range_end)
    return directory / f"readings_{start}_{end}_{table}.parquet"


def file_rows(path: Path) -> int | None:
    """The row count of a complete archive file with the schema; None for anything else."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        return None
    if not parquet.schema_arrow.equals(SCHEMA, check_metadata=False):
        return None
    return parquet.metadata.num_rows


async def archive_chunk(conn: asyncpg.Connection, chunk: Chunk, directory: Path) -> ArchivedChunk:
    """Export ``chunk`` to its Parquet file (or keep a complete one) and verify it.

    Must run inside a transaction, which keeps the chunk locked against writes until it
    ends: the caller drops or trims the chunk in the same transaction. Raises
    ``ArchiveError`` (or the database's or file system's error) when the file is not
    verified; the caller then keeps the chunk.
    """
    if not conn.is_in_transaction():
        raise ArchiveError("archive_chunk must run inside the transaction that removes the rows")
    started = time.perf_counter()
    await conn.execute(f"LOCK TABLE {chunk.name} IN SHARE MODE")
    counted = await conn.fetchval(
        f"SELECT count(*) FROM {RAW} WHERE time >= $1 AND time < $2",
        chunk.range_start, chunk.range_end)
    path = archive_path(directory, chunk)
    existing = await asyncio.to_thread(file_rows, path)
    if existing is not None and existing >= counted:
        return ArchivedChunk(path, existing, path.stat().st_size, reused=True)

    series = await conn.fetch(
        f"SELECT s.series_id, s.device_id, s.metric FROM storage.series s "
        f"WHERE EXISTS (SELECT 1 FROM {RAW} r WHERE r.series_id = s.series_id "
        f"AND r.time >= $1 AND r.time < $2) ORDER BY s.series_id",
        chunk.range_start, chunk.range_end)
    temp = path.with_name(f".{path.name}.tmp")
    writer = _ChunkWriter(temp, series)
    try:
        # COPY takes no parameters: the range goes in as literals of our own formatting.
        status = await conn.copy_from_query(
            f"SELECT time, series_id, value FROM {RAW} "
            f"WHERE time >= '{chunk.range_start.isoformat()}'::timestamptz "
            f"AND time < '{chunk.range_end.isoformat()}'::timestamptz "
            f"ORDER BY series_id, time",
            output=writer.feed, format="binary")
        await writer.finish()
        copied = int(status.split()[-1])
        written = await asyncio.to_thread(file_rows, temp)
        if not written == copied == writer.rows == counted:
            raise ArchiveError(
                f"{chunk.name}: the file holds {written} rows, COPY sent {copied}, "
                f"{writer.rows} were parsed, the chunk has {counted}")
        await asyncio.to_thread(_publish, temp, path)
    except BaseException:
        await asyncio.to_thread(writer.discard)
        raise
    size = path.stat().st_size
    log.info("archived %s [%s, %s): %d rows, %d bytes in %.1fs -> %s", chunk.name,
             chunk.range_start.isoformat(), chunk.range_end.isoformat(), counted, size,
             time.perf_counter() - started, path)
    return ArchivedChunk(path, counted, size, reused=False)


def _publish(temp: Path, path: Path) -> None:
    """fsync the file, rename it over the final name, fsync the directory."""
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ChunkWriter:
    """Parses binary COPY data into row groups of the Parquet file being written."""

    def __init__(self, path: Path, series: list[asyncpg.Record]) -> None:
        self.path = path
        self.rows = 0
        self._ids = np.array([s["series_id"] for s in series], dtype=np.int64)
        self._devices = pa.array([s["device_id"] for s in series], pa.string())
        self._metrics = pa.array([s["metric"] for s in series], pa.string())
        self._buffer = bytearray()
        self._header_seen = False
        self._writer: pq.ParquetWriter | None = None

    async def feed(self, data: bytes) -> None:
        """COPY output: whole row groups are written as soon as they are buffered."""
        self._buffer += data
        if not self._header_seen and len(self._buffer) >= _HEADER:
            if not self._buffer.startswith(SIGNATURE):
                raise ArchiveError("COPY output is not PostgreSQL's binary format")
            extension = int.from_bytes(self._buffer[_HEADER - 4:_HEADER], "big")
            del self._buffer[:_HEADER + extension]
            self._header_seen = True
        group_bytes = ROW_GROUP_ROWS * _ROW.itemsize
        while self._header_seen and len(self._buffer) >= group_bytes:
            group = bytes(self._buffer[:group_bytes])
            del self._buffer[:group_bytes]
            await asyncio.to_thread(self._write, group)

    async def finish(self) -> None:
        """The rows left before the trailer; closes the file (empty chunk: no row group)."""
        if not (self._header_seen and self._buffer.endswith(TRAILER)
                and (len(self._buffer) - len(TRAILER)) % _ROW.itemsize == 0):
            raise ArchiveError("COPY output ended without its trailer or mid-row")
        rest = bytes(self._buffer[:-len(TRAILER)])
        self._buffer.clear()
        await asyncio.to_thread(self._write_last, rest)

    def _write(self, data: bytes) -> None:
        rows = np.frombuffer(data, dtype=_ROW)
        if not ((rows["count"] == 3).all() and (rows["time_size"] == 8).all()
                and (rows["series_id_size"] == 4).all() and (rows["value_size"] == 8).all()):
            raise ArchiveError("COPY row not of (timestamptz, integer, double precision)")
        at = np.minimum(np.searchsorted(self._ids, rows["series_id"]), len(self._ids) - 1)
        if not (len(self._ids) and (self._ids[at] == rows["series_id"]).all()):
            raise ArchiveError("a row's series_id is missing from storage.series")
        positions = pa.array(at, pa.int64())
        table = pa.table([
            self._devices.take(positions),
            self._metrics.take(positions),
            pa.array(rows["time"].astype(np.int64) + PG_EPOCH_US, SCHEMA.field("time").type),
            pa.array(rows["value"].astype(np.float64), pa.float64()),
        ], schema=SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, SCHEMA, **_WRITER_OPTIONS)
        self._writer.write_table(table, row_group_size=len(table))
        self.rows += len(table)

    def _write_last(self, data: bytes) -> None:
        if data:
            self._write(data)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, SCHEMA, **_WRITER_OPTIONS)
        self._writer.close()

    def discard(self) -> None:
        """After a failure: close and remove the temporary file."""
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, pa.ArrowException):
                pass  # the file goes anyway
        self.path.unlink(missing_ok=True)

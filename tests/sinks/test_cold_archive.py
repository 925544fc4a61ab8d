"""Cold archive of raw chunks to Parquet (``sinks/cold_archive.py``) and its use by the
storage maintenance: a chunk is dropped only after its file is written and verified, and
the file reads back (pyarrow, DuckDB) with exactly the chunk's rows.

Unit tests feed ``archive_chunk`` a fake connection whose COPY sends hand-made binary rows;
the integration tests archive and drop chunks of the test's own devices, older than the
retention horizon, in the shared database.
"""
from __future__ import annotations

import asyncio
import struct
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import sinks.cold_archive as cold_archive
from sinks.cold_archive import SCHEMA, ArchiveError, Chunk, archive_chunk, archive_path
from sinks.maintenance import MaintenanceReport, maintain, retention_plan
from sinks.postgres import create_pool
from sinks.timescale import TimescaleSink
from tests.stack import (
    REPO,
    SETTINGS,
    db_connect,
    fleet,
    forget_devices,
    hold_retention_jobs,
    unique,
)

pytestmark = pytest.mark.usefixtures("maintenance_turn")  # the integration tests run it

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PG_EPOCH_US = 946_684_800_000_000
START = datetime(2026, 3, 1, tzinfo=timezone.utc)
CHUNK = Chunk("_timescaledb_internal._hyper_1_7_chunk", START, START + timedelta(days=1))
SERIES = [{"series_id": 3, "device_id": "dev-a", "metric": "temp"},
          {"series_id": 8, "device_id": "dev-a", "metric": "rh"},
          {"series_id": 41, "device_id": "dev-b.x", "metric": "temp"}]
NAMES = {s["series_id"]: (s["device_id"], s["metric"]) for s in SERIES}

# Skips a test where TimescaleDB is the Apache build (no policies).

Row = tuple[str, str, int, float]  # device_id, metric, microseconds since the epoch, value


def _us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _points(count: int) -> list[tuple[int, int, float]]:
    """(time in us since the epoch, series_id, value), in (series, time) order like COPY's."""
    values = [21.5, -0.001, 1e300, -7.25, 0.0, 3.14159265358979]
    start = _us(START)
    return sorted(((start + 1000 * i + 1, sid, values[i % len(values)] * (i + 1))
                   for i in range(count) for sid in NAMES), key=lambda p: (p[1], p[0]))


def _copy_bytes(points: list[tuple[int, int, float]], *, trailer: bool = True) -> bytes:
    """PostgreSQL's binary COPY of (timestamptz, integer, double precision) rows."""
    out = bytearray(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
    for time_us, series_id, value in points:
        out += struct.pack(">hiqiiid", 3, 8, time_us - PG_EPOCH_US, 4, series_id, 8, value)
    return bytes(out + (b"\xff\xff" if trailer else b""))


class FakeChunkConnection:
    """What ``archive_chunk`` asks of asyncpg, answering for one chunk of ``points``."""

    def __init__(self, points: list[tuple[int, int, float]], *, count: int | None = None,
                 in_transaction: bool = True, copy: bytes | None = None) -> None:
        self.points = points
        self.count = len(points) if count is None else count
        self.in_transaction = in_transaction
        self.copy = _copy_bytes(points) if copy is None else copy
        self.statements: list[str] = []
        self.copies = 0

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append(sql)
        return "LOCK TABLE"

    async def fetchval(self, sql: str, *args: Any) -> int:
        assert "count(*)" in sql
        return self.count

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return SERIES

    async def copy_from_query(self, query: str, *, output: Any, format: str) -> str:
        assert format == "binary" and "ORDER BY series_id, time" in query
        self.copies += 1
        for i in range(0, len(self.copy), 7):  # arbitrary pieces, as the socket delivers
            await output(self.copy[i:i + 7])
        return f"COPY {len(self.points)}"


def _expected(points: list[tuple[int, int, float]]) -> Counter[Row]:
    return Counter((*NAMES[sid], time_us, value) for time_us, sid, value in points)


def _read_back(path: Path) -> Counter[Row]:
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    return Counter((r["device_id"], r["metric"], _us(r["time"]), r["value"])
                   for r in table.to_pylist())


def test_the_file_is_named_after_the_chunk_and_its_range(tmp_path: Path) -> None:
    assert archive_path(tmp_path, CHUNK) == (
        tmp_path / "readings_20260301T000000Z_20260302T000000Z__hyper_1_7_chunk.parquet")


async def test_the_file_holds_exactly_the_chunks_rows_in_row_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cold_archive, "ROW_GROUP_ROWS", 4)
    points = _points(5)  # 15 rows: groups of 4, 4, 4 and 3
    conn = FakeChunkConnection(points)
    archived = await archive_chunk(conn, CHUNK, tmp_path)
    assert (archived.path, archived.rows, archived.reused) == (
        archive_path(tmp_path, CHUNK), 15, False)
    assert archived.bytes == archived.path.stat().st_size > 0
    assert _read_back(archived.path) == _expected(points)
    assert pq.ParquetFile(archived.path).metadata.num_row_groups == 4
    assert any(s.startswith(f"LOCK TABLE {CHUNK.name} IN SHARE MODE") for s in conn.statements)
    assert list(tmp_path.iterdir()) == [archived.path]  # no temporary file left


async def test_an_empty_chunk_gets_an_empty_file(tmp_path: Path) -> None:
    archived = await archive_chunk(FakeChunkConnection([]), CHUNK, tmp_path)
    assert archived.rows == 0 and pq.read_metadata(archived.path).num_rows == 0
    assert pq.read_schema(archived.path).equals(SCHEMA, check_metadata=False)


async def test_a_file_that_fails_verification_is_not_kept(tmp_path: Path) -> None:
    # the chunk counts a row more than COPY sends
    with pytest.raises(ArchiveError, match="the chunk has 16"):
        await archive_chunk(FakeChunkConnection(_points(5), count=16), CHUNK, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("copy, error", [
    (_copy_bytes([(_us(START), 99, 1.0)]), "missing from storage.series"),
    (_copy_bytes(_points(2), trailer=False), "without its trailer"),
    (_copy_bytes(_points(2))[:-5] + b"\xff\xff", "mid-row"),
    (b"PGCOPY\n\xff\r\n\x01" + bytes(8) + b"\xff\xff", "binary format"),
])
async def test_bad_copy_data_fails_and_leaves_no_file(tmp_path: Path, copy: bytes,
                                                      error: str) -> None:
    with pytest.raises(ArchiveError, match=error):
        await archive_chunk(FakeChunkConnection(_points(2), copy=copy), CHUNK, tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_it_refuses_to_run_outside_the_removing_transaction(tmp_path: Path) -> None:
    conn = FakeChunkConnection(_points(1), in_transaction=False)
    with pytest.raises(ArchiveError, match="inside the transaction"):
        await archive_chunk(conn, CHUNK, tmp_path)
    assert conn.statements == [] and list(tmp_path.iterdir()) == []


async def test_a_verified_file_is_reused_and_a_corrupt_or_short_one_rewritten(
        tmp_path: Path) -> None:
    points = _points(4)
    path = (await archive_chunk(FakeChunkConnection(points), CHUNK, tmp_path)).path
    before = path.stat()

    again = FakeChunkConnection(points)
    reused = await archive_chunk(again, CHUNK, tmp_path)
    assert (reused.reused, reused.rows, again.copies) == (True, 12, 0)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # a chunk that lost rows since (trimmed): the complete earlier file stays
    trimmed = FakeChunkConnection(points[:3])
    assert (await archive_chunk(trimmed, CHUNK, tmp_path)).reused and trimmed.copies == 0
    assert _read_back(path) == _expected(points)

    path.write_bytes(path.read_bytes()[:-100])  # truncated: no footer
    rewritten = await archive_chunk(FakeChunkConnection(points), CHUNK, tmp_path)
    assert not rewritten.reused and _read_back(path) == _expected(points)

    more = _points(6)  # the chunk holds rows the file lacks
    grown = await archive_chunk(FakeChunkConnection(more), CHUNK, tmp_path)
    assert (grown.reused, grown.rows) == (False, 18) and _read_back(path) == _expected(more)


def test_the_report_says_what_was_archived_and_what_was_kept() -> None:
    off = MaintenanceReport().lines()
    assert not any("archive" in line for line in off)
    report = MaintenanceReport(archive_dir="/archive", archived_chunks=2, archived_rows=10,
                               archived_bytes=300,
                               archive_failures={"c.one": "OSError: disk full"})
    lines = report.lines()
    assert "chunks archived to Parquet in /archive: 2 (10 rows, 300 bytes)" in lines
    assert "archive failed, chunk kept: c.one: OSError: disk full" in lines
    assert report.as_json()["archive_failures"] == {"c.one": "OSError: disk full"}


# ------------------------------------------------------------------------------ integration

async def _seed(devices: list[str], moments: list[datetime]) -> None:
    """Two metrics of each device at each moment, with millisecond times, via the sink."""
    await hold_retention_jobs()
    points = [(_us(moment + timedelta(milliseconds=17 * d)), device, metric,
               round(d * 1.5 + m * 0.25 + k * 0.01, 2))
              for k, moment in enumerate(moments) for d, device in enumerate(devices)
              for m, metric in enumerate(("temperature", "humidity"))]
    pool = await create_pool(SETTINGS)
    try:
        await TimescaleSink(pool).write(points)
    finally:
        await pool.close()


async def _old_moments(days_past_horizon: list[int]) -> list[datetime]:
    """Moments (at minute 7 of hour 12) that many days older than the retention horizon."""
    conn = await db_connect()
    try:
        horizon = (await retention_plan(conn, SETTINGS.storage.retention_days)).horizon_days
    finally:
        await conn.close()
    today = datetime.now(timezone.utc).replace(hour=12, minute=7, second=0, microsecond=0)
    return [today - timedelta(days=horizon + d) for d in days_past_horizon]


async def _chunk_at(moment: datetime) -> Chunk | None:
    conn = await db_connect()
    try:
        row = await conn.fetchrow(
            "SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk, range_start, range_end "
            "FROM timescaledb_information.chunks WHERE hypertable_schema = 'storage' "
            "AND hypertable_name = 'readings' AND range_start <= $1 AND range_end > $1", moment)
    finally:
        await conn.close()
    return Chunk(row["chunk"], row["range_start"], row["range_end"]) if row else None


async def _rows_of(chunk: Chunk) -> Counter[Row]:
    conn = await db_connect()
    try:
        rows = await conn.fetch("SELECT device_id, metric, time, value FROM readings "
                                "WHERE time >= $1 AND time < $2",
                                chunk.range_start, chunk.range_end)
    finally:
        await conn.close()
    return Counter((r["device_id"], r["metric"], _us(r["time"]), r["value"]) for r in rows)


def _duckdb_rows(path: Path) -> Counter[Row]:
    import duckdb  # the "test" extra

    with duckdb.connect() as db:
        rows = db.execute("SELECT device_id, metric, epoch_us(time), value "
                          "FROM read_parquet(?)", [str(path)]).fetchall()
    return Counter(map(tuple, rows))


async def _maintain(archive_dir: Path | str) -> MaintenanceReport:
    report = await asyncio.wait_for(
        maintain(replace(SETTINGS, storage=replace(SETTINGS.storage, archive_dir=str(archive_dir))),
                 unique("test-archive-"), wait=120), 300)
    assert report is not None
    return report


@pytest.mark.integration
async def test_an_archived_and_dropped_chunk_reads_back_with_exactly_its_rows(
        stack: None, tmp_path: Path) -> None:
    devices, _ = fleet("archive-", 3)
    moments = await _old_moments([40])
    await _seed(devices, [moments[0] + timedelta(seconds=5 * k) for k in range(4)])
    chunk = await _chunk_at(moments[0])
    assert chunk is not None
    rows = await _rows_of(chunk)
    assert sum(n for (device, *_), n in rows.items() if device in devices) == 3 * 2 * 4

    report = await _maintain(tmp_path)

    assert await _chunk_at(moments[0]) is None, "the archived chunk was dropped"
    assert report.archive_failures == {}
    assert report.archived_chunks >= 1 and report.archived_rows >= sum(rows.values())
    path = archive_path(tmp_path, chunk)
    assert _read_back(path) == rows
    assert _duckdb_rows(path) == rows
    assert not list(tmp_path.glob(".*")), "no temporary file left"


@pytest.mark.integration
async def test_a_failed_export_keeps_its_chunk_and_the_run_goes_on(
        stack: None, tmp_path: Path) -> None:
    devices, _ = fleet("archive-fail-", 2)
    blocked_at, corrupt_at = await _old_moments([50, 52])
    await _seed(devices, [blocked_at, corrupt_at])
    blocked, corrupt = await _chunk_at(blocked_at), await _chunk_at(corrupt_at)
    assert blocked is not None and corrupt is not None
    blocked_rows, corrupt_rows = await _rows_of(blocked), await _rows_of(corrupt)
    # A directory where the file must go: the rename fails. A corrupt file: rewritten.
    archive_path(tmp_path, blocked).mkdir()
    archive_path(tmp_path, corrupt).write_bytes(b"PAR1 not a parquet file")

    report = await _maintain(tmp_path)

    assert list(report.archive_failures) == [blocked.name]
    assert "IsADirectoryError" in report.archive_failures[blocked.name]
    assert f"archive failed, chunk kept: {blocked.name}: IsADirectoryError" in "\n".join(
        report.lines())
    assert await _chunk_at(blocked_at) == blocked, "the chunk whose export failed is kept"
    assert await _rows_of(blocked) == blocked_rows
    assert await _chunk_at(corrupt_at) is None
    assert _read_back(archive_path(tmp_path, corrupt)) == corrupt_rows
    assert report.analyzed and report.finished_at is not None  # the later steps ran

    archive_path(tmp_path, blocked).rmdir()
    again = await _maintain(tmp_path)
    assert again.archive_failures == {}
    assert await _chunk_at(blocked_at) is None
    assert _read_back(archive_path(tmp_path, blocked)) == blocked_rows


@pytest.mark.integration
async def test_archiving_a_chunk_again_reuses_its_verified_file(
        stack: None, tmp_path: Path) -> None:
    devices, _ = fleet("archive-again-", 2)
    moment = datetime.now(timezone.utc).replace(hour=9, minute=3, second=0, microsecond=0) \
        - timedelta(days=SETTINGS.storage.retention_days // 3)  # inside retention: no run drops it
    await _seed(devices, [moment, moment + timedelta(seconds=5)])
    chunk = await _chunk_at(moment)
    assert chunk is not None
    conn = await db_connect()
    try:
        results = []
        for _ in range(2):
            async with conn.transaction():
                results.append(await archive_chunk(conn, chunk, tmp_path))
                rows = await _rows_of(chunk)
    finally:
        await conn.execute(
            "DELETE FROM storage.readings WHERE series_id IN "
            "(SELECT series_id FROM storage.series WHERE device_id = ANY($1))", devices)
        await conn.close()
    first, second = results
    assert (first.reused, second.reused) == (False, True)
    assert first.path == second.path and first.rows == second.rows == sum(rows.values())
    assert _read_back(first.path) == rows


@pytest.mark.integration
async def test_without_archive_dir_chunks_go_unarchived(stack: None) -> None:
    devices, _ = fleet("archive-off-", 1)
    (moment,) = await _old_moments([60])
    await _seed(devices, [moment])
    chunk = await _chunk_at(moment)
    assert chunk is not None

    report = await _maintain("")

    assert await _chunk_at(moment) is None
    assert (report.archive_dir, report.archived_chunks, report.archive_failures) == (
        None, 0, {})
    assert not any("archive" in line for line in report.lines())
    assert not list(REPO.glob("readings_*.parquet"))


@pytest.mark.integration
async def test_a_trimmed_chunk_is_archived_whole_and_its_file_kept_when_dropped(
        stack: None, tmp_path: Path) -> None:
    (keeper, other), _ = fleet("archive-trim-", 2)
    moment = datetime.now(timezone.utc).replace(hour=12, minute=7, second=0, microsecond=0) \
        - timedelta(days=SETTINGS.storage.retention_days + 7)  # past RETENTION_DAYS: trimmed
    await _seed([keeper, other], [moment, moment + timedelta(seconds=5)])
    chunk = await _chunk_at(moment)
    assert chunk is not None
    conn = await db_connect()
    try:
        await conn.execute("UPDATE devices SET retention_days = $2 WHERE device_id = $1",
                           keeper, SETTINGS.storage.retention_days + 100)
        # An earlier run may have trimmed this chunk already: let this one trim it again.
        await conn.execute("DELETE FROM storage.chunk_maintenance WHERE chunk = $1", chunk.name)
        rows = await _rows_of(chunk)
        trimmed = await _maintain(tmp_path)
        left = await _rows_of(chunk)
    finally:
        await conn.close()
        # The chunk is past the horizon again; a failure above must not leave the override,
        # which would hold every other test's old chunks within the horizon.
        await forget_devices([keeper])
    path = archive_path(tmp_path, chunk)
    assert trimmed.archive_failures == {} and trimmed.trimmed_chunks >= 1
    assert _read_back(path) == rows, "archived whole, before the trim"
    assert {d for d, *_ in left} & {keeper, other} == {keeper}, "then trimmed to the keeper"

    dropped = await _maintain(tmp_path)
    assert await _chunk_at(moment) is None
    assert dropped.archive_failures == {} and dropped.archived_chunks >= 1
    assert _read_back(path) == rows, "the whole-chunk file is kept, not replaced"


@pytest.mark.integration
@pytest.mark.usefixtures("timescale_license")
async def test_with_archive_dir_no_retention_policy_drops_raw_chunks_unarchived(
        tmp_path: Path) -> None:
    async def raw_policies() -> dict[str, int]:
        conn = await db_connect()
        try:
            rows = await conn.fetch(
                "SELECT hypertable_name, count(*) AS n FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_retention' AND hypertable_schema = 'storage' "
                "GROUP BY 1")
        finally:
            await conn.close()
        return {r["hypertable_name"]: r["n"] for r in rows}

    await _maintain("")
    assert (await raw_policies()).get("readings") == 1
    try:
        report = await _maintain(tmp_path)
        assert any(p.startswith("storage.readings: retention policy") and "removed" in p
                   for p in report.policies), report.policies
        policies = await raw_policies()
        assert "readings" not in policies and policies.get("readings_1m") == 1
    finally:
        await _maintain("")  # the policy is back for the other tests
    assert (await raw_policies()).get("readings") == 1

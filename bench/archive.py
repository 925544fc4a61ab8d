"""Cold archive benchmark: ``python -m bench.archive`` (``--help`` for the options).

Against the local stack's database, touching nobody else's data:

1. picks the newest whole UTC days, at least ``--age-days`` (45) old, on which
   ``storage.readings`` has no chunk yet (inside ``RETENTION_DAYS``, so no maintenance run
   drops them meanwhile);
2. seeds ``--points`` (1,000,000) points there: ``--devices`` (1,000) devices of a fresh
   prefix x ``--metrics`` (5) metrics, one reading every ``--interval`` (5) seconds per
   device at its own millisecond offset, values random walks at a sensor's 0.01
   resolution; straight into ``storage.readings`` with COPY (the aggregates are not needed);
3. exports each chunk holding them with ``sinks.cold_archive.archive_chunk`` into a
   temporary directory, in a transaction rolled back afterwards (nothing is dropped), and
   reads each file back with pyarrow;
4. reports Parquet bytes per point, export seconds and points per second (and the bytes
   per point of the same chunk in PostgreSQL), writes ``bench/results/archive.json``, then
   deletes its rows, its chunks and its series.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import pyarrow.parquet as pq

from bench.queries import RESULTS, iso, connect, machine
from sinks.cold_archive import ROW_GROUP_ROWS, Chunk, archive_chunk
from streams.settings import Settings

DAY = timedelta(days=1)

CHUNKS_IN = """
SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk, range_start, range_end
FROM timescaledb_information.chunks
WHERE hypertable_schema = 'storage' AND hypertable_name = 'readings'
  AND range_start < $2 AND range_end > $1
ORDER BY range_start
"""


async def free_days(conn: asyncpg.Connection, age_days: int, days: int) -> datetime:
    """The start of the newest run of ``days`` whole UTC days, at least ``age_days`` old,
    that no raw chunk overlaps yet."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=age_days)
    for _ in range(age_days):
        if not await conn.fetch(CHUNKS_IN, start, start + days * DAY):
            return start
        start -= DAY
    raise RuntimeError(f"no {days} free days older than {age_days} days")


def readings(points: int, devices: int, metrics: int, interval_s: int, start: datetime,
             seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series index, time in microseconds since the epoch, value) of every point."""
    per_series = points // (devices * metrics)
    rng = np.random.default_rng(seed)
    offsets_us = rng.integers(0, interval_s * 1000, devices) * 1000  # each device its own
    start_us = int(start.timestamp() * 1_000_000)
    steps = np.arange(per_series, dtype=np.int64) * interval_s * 1_000_000
    times = start_us + np.repeat(offsets_us, metrics)[:, None] + steps[None, :]
    levels = rng.uniform(-20, 80, devices * metrics)[:, None]
    walks = levels + np.cumsum(rng.normal(0, 0.05, (devices * metrics, per_series)), axis=1)
    series = np.repeat(np.arange(devices * metrics), per_series)
    return series, times.ravel(), np.round(walks, 2).ravel()


async def seed(conn: asyncpg.Connection, prefix: str, args: argparse.Namespace,
               start: datetime) -> list[int]:
    """Create the series and COPY the points in time order; their series ids."""
    names = [(f"{prefix}{d:04d}", f"m{m}") for d in range(args.devices)
             for m in range(args.metrics)]
    rows = await conn.fetch(
        "INSERT INTO storage.series (device_id, metric) "
        "SELECT * FROM unnest($1::text[], $2::text[]) RETURNING series_id, device_id, metric",
        [n[0] for n in names], [n[1] for n in names])
    by_name = {(r["device_id"], r["metric"]): r["series_id"] for r in rows}
    ids = np.array([by_name[n] for n in names], dtype=np.int32)
    series, times, values = readings(args.points, args.devices, args.metrics, args.interval,
                                     start)
    order = np.argsort(times, kind="stable")  # arrival order: time, as the pipeline writes
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    records = ((epoch + timedelta(microseconds=int(t)), int(s), float(v))
               for t, s, v in zip(times[order], ids[series[order]], values[order]))
    await conn.copy_records_to_table("readings", schema_name="storage", records=records,
                                     columns=["time", "series_id", "value"])
    return ids.tolist()


async def export(conn: asyncpg.Connection, chunks: list[Chunk],
                 directory: Path) -> dict[str, Any]:
    files, rows, size, seconds, in_db = [], 0, 0, 0.0, 0
    for chunk in chunks:
        in_db += await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", chunk.name)
        tr = conn.transaction()
        await tr.start()
        try:
            t0 = time.perf_counter()
            archived = await archive_chunk(conn, chunk, directory)
            seconds += time.perf_counter() - t0
        finally:
            await tr.rollback()  # the chunk stays: cleaned up below with the rest
        read_back = pq.read_table(archived.path).num_rows
        if read_back != archived.rows:
            raise RuntimeError(f"{archived.path}: {read_back} rows read back, "
                               f"{archived.rows} archived")
        meta = pq.read_metadata(archived.path)
        files.append({"chunk": chunk.name, "file": archived.path.name, "rows": archived.rows,
                      "bytes": archived.bytes, "row_groups": meta.num_row_groups})
        rows += archived.rows
        size += archived.bytes
    return {"files": files, "rows": rows, "bytes": size,
            "bytes_per_point": round(size / rows, 2),
            "postgres_bytes_per_point": round(in_db / rows, 1),
            "export_seconds": round(seconds, 2),
            "points_per_second": round(rows / seconds)}


async def cleanup(conn: asyncpg.Connection, ids: list[int], start: datetime, end: datetime,
                  ours: list[Chunk]) -> None:
    """Remove the seeded rows and series, and the chunks this run created."""
    await conn.execute("DELETE FROM storage.readings WHERE series_id = ANY($1::integer[]) "
                       "AND time >= $2 AND time < $3", ids, start, end)
    for chunk in ours:
        if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {chunk.name})"):
            await conn.execute(
                "SELECT drop_chunks('storage.readings'::regclass, older_than => $1::timestamptz, "
                "newer_than => $2::timestamptz)", chunk.range_end, chunk.range_start)
    await conn.execute("DELETE FROM storage.series WHERE series_id = ANY($1::integer[])", ids)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    per_series = args.points // (args.devices * args.metrics)
    span = timedelta(seconds=per_series * args.interval + args.interval)
    days = -(-span // DAY) + 1  # the first reading is an hour into the first day
    prefix = f"bench-archive-{uuid.uuid4().hex[:8]}-"
    conn = await connect(settings)
    ids: list[int] = []
    chunks: list[Chunk] = []
    try:
        first_day = await free_days(conn, args.age_days, days)
        start = first_day + timedelta(hours=1)
        print(f"seeding {per_series * args.devices * args.metrics:,} points of {prefix}* "
              f"from {iso(start)} ...", flush=True)
        t0 = time.perf_counter()
        ids = await seed(conn, prefix, args, start)
        seed_seconds = time.perf_counter() - t0
        chunks = [Chunk(r["chunk"], r["range_start"], r["range_end"]) for r in
                  await conn.fetch(CHUNKS_IN, first_day, first_day + days * DAY)]
        for chunk in chunks:
            await conn.execute(f"VACUUM ANALYZE {chunk.name}")
        print(f"exporting {len(chunks)} chunk(s) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-archive-") as directory:
            exported = await export(conn, chunks, Path(directory))
    finally:
        if ids:
            await cleanup(conn, ids, first_day, first_day + days * DAY, chunks)
        await conn.close()
    return {
        "machine": machine(),
        "data": {"points": per_series * args.devices * args.metrics, "devices": args.devices,
                 "metrics": args.metrics, "interval_s": args.interval,
                 "values": "random walks, 0.01 resolution", "row_group_rows": ROW_GROUP_ROWS,
                 "seed_seconds": round(seed_seconds, 1)},
        "archive": exported,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "finished_at": iso(datetime.now(timezone.utc).replace(microsecond=0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--interval", type=int, default=5, help="seconds between readings")
    parser.add_argument("--age-days", type=int, default=45,
                        help="the seeded chunks are at least this old")
    parser.add_argument("--output", type=Path, default=RESULTS / "archive.json")
    args = parser.parse_args()
    if args.points < args.devices * args.metrics:
        parser.error("--points must be at least --devices x --metrics")
    results = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    a = results["archive"]
    print(f"Parquet archive: {a['rows']:,} points in {len(a['files'])} file(s), "
          f"{a['bytes']:,} bytes = {a['bytes_per_point']} bytes per point "
          f"({a['postgres_bytes_per_point']} in PostgreSQL); export {a['export_seconds']} s, "
          f"{a['points_per_second']:,} points/s; peak RSS {results['peak_rss_mb']} MB")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

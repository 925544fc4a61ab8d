"""Query and storage benchmark: ``python -m bench.queries`` (``--help`` for the options).

What it does, against the local stack's PostgreSQL (port 55432) but in a database of its
own, ``devicestream_bench``, so nobody else's data is touched:

1. creates the database (as the ``postgres`` superuser over the Unix socket, with
   ``CREATE EXTENSION timescaledb``; owner ``devicestream``) and applies the migrations;
2. loads 10M points (1,000 devices x 5 metrics, one reading per device every ~21.6 min
   over the last 30 days) in time order through the real sink (``TimescaleSink``: COPY,
   dedupe, 1m/1h aggregates, devices), 20k points a batch, and times it;
3. measures on-disk bytes per raw point (heap + indexes + TOAST of ``storage.readings``,
   plus the series dictionary) right after the load, then runs the storage maintenance
   (index compaction of closed chunks, CLUSTER of closed readings_1h chunks, ANALYZE) as
   the leader would, and measures again;
4. starts a real worker (``faust -A streams.app worker``) whose read pool points at the
   bench database (no device topic consumed, maintenance timer off) and times its HTTP
   routes from a keep-alive client, after a warm-up: ``latest``, a 1-hour range of raw
   readings, 1-minute aggregates over a day and 1-hour aggregates over 30 days, each for
   random devices and windows, ``--calls`` times (p50, p99, max, in milliseconds), once
   right after start and once after a pass over every device (steady state: a fresh
   PostgreSQL backend pays a page fault on its first touch of each shared-buffer page),
   with the worker's own p50s from its Server-Timing header (``app``: request to encoded
   answer, ``db``: waiting for the database);
5. times an aggregate SQL computes over ~1M raw rows (every device, the newest 3 days:
   count, avg, min and max per metric), through the ``readings`` view as a user would
   write it, and the same grouped by series first;
6. measures retention: 100 devices get a 7-day retention and 10 devices 400 days with
   ``RETENTION_DAYS=20``, then one maintenance run (per-device deletes, trim of the chunks
   past 20 days to the 10 long-retention devices) is timed, and bytes are measured again;
7. writes ``bench/results/queries.json``, prints the figures and drops the database
   (``--keep`` keeps it for a look with psql).

It needs root (``runuser -u postgres``) to create the database, the local broker on
:9092 for the worker, and about 5 GB of disk.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import asyncpg
import orjson

from schema.migrate import migrate
from schema.roles import grant_privileges
from sinks.maintenance import RetentionSettings, run_maintenance
from sinks.postgres import is_transient
from sinks.timescale import TimescaleSink
from bench.worker_process import WorkerProcess
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DB_NAME = "devicestream_bench"
PG_PORT = 55432
TARGETS_MS = {"latest": 2.0, "readings_1h_range": 5.0, "aggregates_1m_day": 10.0,
              "aggregates_1h_30_days": 10.0, "aggregate_1m_raw_rows": 250.0}
TARGET_BYTES_PER_POINT = 100.0


def psql_super(sql: str, database: str = "postgres", attempts: int = 30,
                socket_dir: str = "/var/run/postgresql", port: int = PG_PORT) -> None:
    """Run ``sql`` as the postgres superuser; retried while the server is (re)starting."""
    for attempt in range(attempts):
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-h", socket_dir,
             "-p", str(port), "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            capture_output=True, text=True)
        if done.returncode == 0:
            return
        if done.returncode != 2 or attempt == attempts - 1:  # 2: no connection
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr.strip()}")
        time.sleep(2)


def create_database() -> None:
    psql_super(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    psql_super(f"CREATE DATABASE {DB_NAME} OWNER {bench_settings().db.owner_user}")
    psql_super("CREATE EXTENSION IF NOT EXISTS timescaledb", DB_NAME)


def drop_database() -> None:
    psql_super(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def bench_settings(port: int = PG_PORT, database: str = DB_NAME) -> Settings:
    """Settings for the bench database (or ``database``) on the bench server's ``port``."""
    return Settings.from_env({"DB_PORT": str(port), "DB_NAME": database})


async def connect(settings: Settings) -> asyncpg.Connection:
    """A connection as the owner role: the benchmarks seed, VACUUM and clean up tables."""
    owner = settings.as_owner()
    return await asyncpg.connect(
        host=owner.db.host, port=owner.db.port, user=owner.db.user,
        password=owner.db.password, database=owner.db.name, statement_cache_size=0,
        command_timeout=None)


# ------------------------------------------------------------------------------ load

def generate(points: int, devices: int, metrics: int, days: int,
             end: datetime) -> Iterator[tuple[int, str, str, float]]:
    """Readings in time order; each device reports every ``period`` with its own offset."""
    readings_per_device = points // (devices * metrics)
    period_us = days * 86_400_000_000 // readings_per_device
    start_us = int(end.timestamp() * 1_000_000) - readings_per_device * period_us
    names = [f"bench-{d:04d}" for d in range(devices)]
    metric_names = [f"m{m}" for m in range(metrics)]
    rng = random.Random(7)
    for k in range(readings_per_device):
        base = start_us + k * period_us
        for d, name in enumerate(names):
            t = base + d * (period_us // devices)
            for m in metric_names:
                yield (t, name, m, round(rng.uniform(-50, 150), 3))


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """The dataset's options, which ``load`` reads: 10M points by default."""
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch", type=int, default=20_000, help="points per sink write")


async def load(settings: Settings, args: argparse.Namespace, end: datetime) -> dict[str, Any]:
    pool = await asyncpg.create_pool(
        min_size=1, max_size=1, host=settings.db.host, port=settings.db.port,
        user=settings.db.user, password=settings.db.password, database=settings.db.name,
        statement_cache_size=0, command_timeout=None)
    sink = TimescaleSink(pool)
    batch: list[tuple[int, str, str, float]] = []
    written = inserted = 0
    busy = 0.0
    started = time.perf_counter()
    last_report = started

    async def write(points: list[tuple[int, str, str, float]]) -> Any:
        for attempt in range(60):  # the sink is idempotent: a batch is simply written again
            try:
                return await sink.write(points)
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc) or attempt == 59:
                    raise
                print(f"  database unavailable ({type(exc).__name__}); retrying", flush=True)
                await asyncio.sleep(2)

    for point in generate(args.points, args.devices, args.metrics, args.days, end):
        batch.append(point)
        if len(batch) == args.batch:
            t0 = time.perf_counter()
            result = await write(batch)
            busy += time.perf_counter() - t0
            written += result.points
            inserted += result.inserted
            batch = []
            if time.perf_counter() - last_report > 15:
                last_report = time.perf_counter()
                print(f"  loaded {written:,} points ({written / busy:,.0f} points/s in the sink)",
                      flush=True)
    if batch:
        t0 = time.perf_counter()
        result = await write(batch)
        busy += time.perf_counter() - t0
        written += result.points
        inserted += result.inserted
    await pool.close()
    return {"points": written, "inserted": inserted, "sink_seconds": round(busy, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "sink_points_per_second": round(written / busy)}


# ------------------------------------------------------------------------------ storage

STORAGE_SIZES = """
SELECT (SELECT total_bytes FROM hypertable_detailed_size('storage.readings')) AS raw_total,
       (SELECT table_bytes FROM hypertable_detailed_size('storage.readings')) AS raw_heap,
       (SELECT index_bytes FROM hypertable_detailed_size('storage.readings')) AS raw_index,
       pg_total_relation_size('storage.series') AS series_bytes,
       (SELECT total_bytes FROM hypertable_detailed_size('storage.readings_1m')) AS minute_bytes,
       (SELECT total_bytes FROM hypertable_detailed_size('storage.readings_1h')) AS hour_bytes,
       (SELECT count(*) FROM storage.readings) AS raw_rows,
       (SELECT count(*) FROM storage.readings_1m) AS minute_rows,
       (SELECT count(*) FROM storage.readings_1h) AS hour_rows
"""


async def storage(conn: asyncpg.Connection) -> dict[str, Any]:
    row = dict(await conn.fetchrow(STORAGE_SIZES))
    rows = max(row["raw_rows"], 1)
    return {
        **row,
        "bytes_per_point": round(row["raw_total"] / rows, 1),
        "bytes_per_point_with_dictionary": round(
            (row["raw_total"] + row["series_bytes"]) / rows, 1),
        "heap_bytes_per_point": round(row["raw_heap"] / rows, 1),
        "index_bytes_per_point": round(row["raw_index"] / rows, 1),
    }


async def maintain_fully(conn: asyncpg.Connection, retention: RetentionSettings) -> dict:
    """Maintenance until no index is left to compact nor readings_1h chunk to cluster;
    the last run's report."""
    runs, seconds = 0, 0.0
    while True:
        t0 = time.perf_counter()
        report = await run_maintenance(conn, retention, full_analyze=runs == 0)
        seconds += time.perf_counter() - t0
        runs += 1
        if report.compaction_backlog == 0 and report.clustering_backlog == 0:
            return {"runs": runs, "seconds": round(seconds, 1),
                    "compacted_indexes_last_run": report.compacted_indexes,
                    "clustered_hourly_chunks_last_run": report.clustered_hourly_chunks}


# ------------------------------------------------------------------------------ HTTP

def bench_worker(settings: Settings, **env: str) -> WorkerProcess:
    """A real worker serving the routes, its read pool on the bench database, consuming
    nothing; ``env`` adds to or overrides its environment (``bench.startup``'s worker
    consumes)."""
    return WorkerProcess("bench", **{
        "DB_HOST": settings.db.host, "DB_PORT": str(settings.db.port),
        "DB_NAME": settings.db.name, "DEVICE_FILTER": "^bench-queries-consumes-nothing-$",
        "MAINTENANCE_INTERVAL": "0", **env})


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def time_routes(worker: WorkerProcess, args: argparse.Namespace,
                      end: datetime) -> dict[str, Any]:
    rng = random.Random(11)
    devices = [f"bench-{d:04d}" for d in range(args.devices)]
    span = timedelta(days=args.days)

    def window(length: timedelta) -> tuple[str, str]:
        latest_start = end - length
        start = end - span + (latest_start - (end - span)) * rng.random()
        return iso(start), iso(start + length)

    def latest(device: str) -> str:
        return f"/devices/{device}/latest"

    def hour_range(device: str) -> str:
        start, stop = window(timedelta(hours=1))
        return f"/devices/{device}/readings?start={start}&end={stop}"

    def minute_day(device: str) -> str:
        start, stop = window(timedelta(days=1))
        return f"/devices/{device}/aggregates?resolution=1m&start={start}&end={stop}"

    def hour_month(device: str) -> str:
        return (f"/devices/{device}/aggregates?resolution=1h"
                f"&start={iso(end - span)}&end={iso(end)}")

    routes = {"latest": latest, "readings_1h_range": hour_range,
              "aggregates_1m_day": minute_day, "aggregates_1h_30_days": hour_month}
    base = f"http://127.0.0.1:{worker.web_port}"
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=1)
    await worker.answering(latest(devices[0]), 200)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + 120
        while "[^Worker]: Ready" not in worker.log_text():  # it answers before it joins
            if time.monotonic() > deadline:  # start-up work would disturb the timings
                raise RuntimeError(f"the bench worker is not ready:\n{worker.log_tail()}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)

        async def timed(make: Any) -> tuple[list[float], list[int], dict[str, list[float]]]:
            samples: list[float] = []
            rows: list[int] = []
            server: dict[str, list[float]] = {}
            for _ in range(args.calls):
                path = make(rng.choice(devices))
                t0 = time.perf_counter()
                async with session.get(base + path) as response:
                    body = await response.read()
                samples.append((time.perf_counter() - t0) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
                for name, ms in _server_timing(response.headers.get("Server-Timing", "")):
                    server.setdefault(name, []).append(ms)
                answer = orjson.loads(body)
                rows.append(answer["count"] if "count" in answer else len(answer["metrics"]))
            return samples, rows, server

        for name, make in routes.items():
            for _ in range(args.warmup):
                async with session.get(base + make(rng.choice(devices))) as response:
                    await response.read()
            cold, _, _ = await timed(make)
            # A PostgreSQL backend pays a page fault the first time it touches a page of
            # shared buffers (docs/performance.md#queries): one call per device first, as
            # a long-running worker's connections have made.
            for device in devices:
                async with session.get(base + make(device)) as response:
                    await response.read()
            samples, rows, server = await timed(make)
            results[name] = _percentiles(samples) | {
                "calls": len(samples), "rows_per_answer_median": statistics.median(rows),
                "target_p50_ms": TARGETS_MS[name],
                # the worker's own figures (Server-Timing): "app" from the request to the
                # encoded answer, "db" the part spent waiting for the database
                "server_p50_ms": {k: round(statistics.median(v), 3) for k, v in server.items()},
                "before_warm_up": _percentiles(cold)}
    return results


def _server_timing(header: str) -> list[tuple[str, float]]:
    """``db;dur=1.2, app;dur=3.4`` -> [("db", 1.2), ("app", 3.4)]."""
    out = []
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                out.append((name, float(value)))
    return out


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]  # noqa: E731
    return {"p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(pick(0.99), 3),
            "max_ms": round(ordered[-1], 3), "mean_ms": round(statistics.fmean(ordered), 3)}


# ------------------------------------------------------------------------------ 1M rows

VIEW_AGGREGATE = """
SELECT metric, count(*) AS points, avg(value), min(value), max(value)
FROM readings WHERE time >= $1 AND time < $2 GROUP BY metric
"""

SERIES_FIRST_AGGREGATE = """
SELECT s.metric, sum(a.n) AS points, sum(a.total) / sum(a.n) AS avg, min(a.lo), max(a.hi)
FROM (SELECT series_id, count(*) AS n, sum(value) AS total, min(value) AS lo,
             max(value) AS hi
      FROM storage.readings WHERE time >= $1 AND time < $2 GROUP BY series_id) a
JOIN storage.series s USING (series_id)
GROUP BY s.metric
"""


async def time_big_aggregate(settings: Settings, end: datetime, runs: int) -> dict[str, Any]:
    conn = await connect(settings)
    try:
        start = end - timedelta(days=3)
        rows = await conn.fetchval(
            "SELECT count(*) FROM storage.readings WHERE time >= $1 AND time < $2", start, end)
        out: dict[str, Any] = {"raw_rows": rows, "range": [iso(start), iso(end)]}
        for name, sql in (("via_readings_view", VIEW_AGGREGATE),
                          ("grouped_by_series_first", SERIES_FIRST_AGGREGATE)):
            samples = []
            for _ in range(runs + 1):
                async with conn.transaction(readonly=True):
                    t0 = time.perf_counter()
                    result = await conn.fetch(sql, start, end)
                    samples.append((time.perf_counter() - t0) * 1000)
            assert sum(r["points"] for r in result) == rows
            out[name] = _percentiles(samples[1:]) | {"runs": runs}
        out["target_ms"] = TARGETS_MS["aggregate_1m_raw_rows"]
        return out
    finally:
        await conn.close()


# ------------------------------------------------------------------------------ retention

async def time_retention(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    conn = await connect(settings)
    try:
        devices = [f"bench-{d:04d}" for d in range(args.devices)]
        await conn.execute("UPDATE devices SET retention_days = 7 WHERE device_id = ANY($1)",
                           devices[:100])
        await conn.execute("UPDATE devices SET retention_days = 400 WHERE device_id = ANY($1)",
                           devices[100:110])
        before = await conn.fetchval("SELECT count(*) FROM storage.readings")
        bytes_before = (await storage(conn))["raw_total"]
        # The alternative to trimming, on the second-oldest chunk (the oldest holds part of
        # a day): DELETE the rows of every device without a longer retention, then VACUUM
        # (the chunk keeps its size).
        chunk = await conn.fetchval(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM "
            "timescaledb_information.chunks WHERE hypertable_schema = 'storage' "
            "AND hypertable_name = 'readings' ORDER BY range_start LIMIT 1 OFFSET 1")
        chunk_bytes = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", chunk)
        t0 = time.perf_counter()
        deleted = await conn.execute(
            f"DELETE FROM {chunk} WHERE series_id NOT IN (SELECT s.series_id FROM "
            "storage.series s JOIN devices d USING (device_id) WHERE d.retention_days > 20)")
        await conn.execute(f"VACUUM {chunk}")
        delete_seconds = time.perf_counter() - t0
        alternative = {
            "chunk_rows_deleted": int(deleted.split()[-1]),
            "seconds": round(delete_seconds, 2),
            "chunk_bytes_before": chunk_bytes,
            "chunk_bytes_after": await conn.fetchval(
                "SELECT pg_total_relation_size($1::regclass)", chunk),
        }
        retention = RetentionSettings(raw_days=20, minute_days=365, hour_days=1825,
                                      compress_after_days=7)
        t0 = time.perf_counter()
        report = await run_maintenance(conn, retention, full_analyze=False)
        seconds = time.perf_counter() - t0
        after = await conn.fetchval("SELECT count(*) FROM storage.readings")
        sizes = await storage(conn)
        return {
            "setup": "RETENTION_DAYS=20; 100 devices at 7 days, 10 devices at 400 days",
            "seconds": round(seconds, 2), "step_seconds": report.seconds,
            "rows_before": before, "rows_after": after,
            "deleted_rows_per_override": report.deleted_rows,
            "trimmed_chunks": report.trimmed_chunks,
            "trimmed_rows_kept": report.trimmed_rows_kept,
            "trim_seconds_per_chunk": round(
                report.seconds.get("trim", 0.0) / max(report.trimmed_chunks, 1), 3),
            "bytes_before": bytes_before, "bytes_after": sizes["raw_total"],
            "alternative_delete_and_vacuum_one_chunk": alternative,
        }
    finally:
        await conn.close()


TARGET_COMPRESSED_BYTES_PER_POINT = 50.0


async def time_compression(settings: Settings, compress_after_days: int) -> dict[str, Any]:
    """Compress the raw chunks that ended more than ``compress_after_days`` ago and are not
    yet (the compression policy may have done some already), timed; then the points and
    bytes before and after compression of every compressed raw chunk. Maintenance has set
    compression up by then (segment by series, order by time)."""
    conn = await connect(settings)
    try:
        due = await conn.fetch(
            "SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk FROM "
            "timescaledb_information.chunks WHERE hypertable_schema = 'storage' "
            "AND hypertable_name = 'readings' AND NOT is_compressed "
            "AND range_end < now() - make_interval(days => $1)", compress_after_days)
        due_rows = 0
        for row in due:
            due_rows += await conn.fetchval(f"SELECT count(*) FROM {row['chunk']}")
        t0 = time.perf_counter()
        for row in due:
            await conn.execute("SELECT compress_chunk($1::regclass)", row["chunk"])
        seconds = time.perf_counter() - t0
        stats = await conn.fetch(
            "SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk, "
            "before_compression_total_bytes AS before, after_compression_total_bytes AS after "
            "FROM chunk_compression_stats('storage.readings') WHERE compression_status = "
            "'Compressed'")
        rows = 0
        for row in stats:
            rows += await conn.fetchval(f"SELECT count(*) FROM {row['chunk']}")
    finally:
        await conn.close()
    before, after = sum(r["before"] for r in stats), sum(r["after"] for r in stats)
    return {
        "chunks": len(stats), "rows": rows, "bytes_before": before, "bytes_after": after,
        "bytes_per_point_before": round(before / max(rows, 1), 1),
        "bytes_per_point": round(after / max(rows, 1), 1),
        "target_bytes_per_point": TARGET_COMPRESSED_BYTES_PER_POINT,
        "compressed_here": {"chunks": len(due), "rows": due_rows, "seconds": round(seconds, 1)},
    }


# ------------------------------------------------------------------------------ main

async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = bench_settings()
    end = datetime.now(timezone.utc).replace(microsecond=0)
    results: dict[str, Any] = {
        "machine": machine(),
        "data": {"points": args.points, "devices": args.devices, "metrics": args.metrics,
                 "days": args.days, "batch": args.batch},
    }
    conn = await connect(settings)
    try:
        await migrate(conn)
        await grant_privileges(conn, settings.db.user, settings.read_db.user)
        results["postgres"] = await conn.fetchval("SHOW server_version")
        results["timescaledb_license"] = await conn.fetchval("SHOW timescaledb.license")
    finally:
        await conn.close()

    print(f"loading {args.points:,} points through the sink ...", flush=True)
    results["load"] = await load(settings, args, end)
    print(f"  {results['load']}", flush=True)

    conn = await connect(settings)
    try:
        await conn.execute("VACUUM ANALYZE storage.readings")
        results["storage_after_load"] = await storage(conn)
        print("maintenance (index compaction, clustering, ANALYZE) ...", flush=True)
        results["maintenance"] = await maintain_fully(
            conn, RetentionSettings.from_settings(settings))
        results["storage"] = await storage(conn)
    finally:
        await conn.close()
    print(f"  bytes per raw point: {results['storage_after_load']['bytes_per_point']} after "
          f"the load, {results['storage']['bytes_per_point']} after maintenance", flush=True)

    print(f"timing the routes ({args.calls} calls each) ...", flush=True)
    worker = bench_worker(settings).start()
    try:
        results["routes"] = await time_routes(worker, args, end)
    finally:
        worker.stop()
    print("timing the 1M-raw-row aggregate ...", flush=True)
    results["aggregate_1m_raw_rows"] = await time_big_aggregate(settings, end, args.agg_runs)
    if results["timescaledb_license"] == "timescale":
        print("compressing the raw chunks past COMPRESS_AFTER_DAYS ...", flush=True)
        results["compression"] = await time_compression(settings,
                                                         settings.storage.compress_after_days)
    if not args.skip_retention:
        print("timing a retention run ...", flush=True)
        results["retention"] = await time_retention(settings, args)
    return results


def report(results: dict[str, Any]) -> list[str]:
    lines = [f"load: {results['load']['points']:,} points through the sink at "
             f"{results['load']['sink_points_per_second']:,} points/s"]
    s0, s1 = results["storage_after_load"], results["storage"]
    lines.append(
        f"bytes per raw point (heap + index): {s0['bytes_per_point']} after the load "
        f"({s0['heap_bytes_per_point']} + {s0['index_bytes_per_point']}), "
        f"{s1['bytes_per_point']} after maintenance ({s1['heap_bytes_per_point']} + "
        f"{s1['index_bytes_per_point']}); {s1['bytes_per_point_with_dictionary']} with the "
        f"series dictionary [target <= {TARGET_BYTES_PER_POINT:g}]")
    for name, r in results["routes"].items():
        lines.append(f"{name}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms "
                     f"over {r['calls']} calls, {r['rows_per_answer_median']:g} rows per answer "
                     f"[target p50 < {r['target_p50_ms']:g} ms]; in the worker (p50): "
                     + ", ".join(f"{k} {v} ms" for k, v in r["server_p50_ms"].items())
                     + "; before the warm-up pass: "
                     f"p50 {r['before_warm_up']['p50_ms']} ms, "
                     f"p99 {r['before_warm_up']['p99_ms']} ms")
    agg = results["aggregate_1m_raw_rows"]
    for name in ("via_readings_view", "grouped_by_series_first"):
        lines.append(f"aggregate over {agg['raw_rows']:,} raw rows ({name}): p50 "
                     f"{agg[name]['p50_ms']} ms, max {agg[name]['max_ms']} ms "
                     f"[target < {agg['target_ms']:g} ms]")
    if "retention" in results:
        r = results["retention"]
        alt = r["alternative_delete_and_vacuum_one_chunk"]
        lines.append(f"retention run ({r['setup']}): {r['seconds']} s, "
                     f"{r['rows_before'] - r['rows_after']:,} rows removed, "
                     f"{r['trimmed_chunks']} chunks trimmed keeping {r['trimmed_rows_kept']:,} "
                     f"({r['trim_seconds_per_chunk']} s a chunk), raw bytes "
                     f"{r['bytes_before']:,} -> {r['bytes_after']:,}; the alternative on one "
                     f"chunk (DELETE + VACUUM of {alt['chunk_rows_deleted']:,} rows): "
                     f"{alt['seconds']} s, chunk bytes {alt['chunk_bytes_before']:,} -> "
                     f"{alt['chunk_bytes_after']:,}")
    if "compression" in results:
        c = results["compression"]
        lines.append(f"compression of {c['chunks']} raw chunks ({c['rows']:,} points): "
                     f"{c['bytes_before']:,} -> {c['bytes_after']:,} bytes, "
                     f"{c['bytes_per_point_before']} -> {c['bytes_per_point']} bytes per point "
                     f"[target <= {c['target_bytes_per_point']:g}]; of those, "
                     f"{c['compressed_here']['chunks']} chunks ({c['compressed_here']['rows']:,} "
                     f"points) compressed by the benchmark in {c['compressed_here']['seconds']} s, "
                     "the others by the compression policy")
    else:
        lines.append(f"compression: not measured, TimescaleDB here runs the "
                     f"{results['timescaledb_license']} license")
    return lines


def command(module: str) -> str:
    """This run's command line, as ``python -m module ...``."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on, as its results record it."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def save_results(results: dict[str, Any], output: Path, lines: list[str]) -> None:
    """Stamp, write as JSON and print a benchmark's results (bench.queries, bench.backup)."""
    results["finished_at"] = iso(datetime.now(timezone.utc).replace(microsecond=0))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print("\n".join(lines))
    print(f"written to {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_options(parser)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per route")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls per route")
    parser.add_argument("--agg-runs", type=int, default=10)
    parser.add_argument("--skip-retention", action="store_true")
    parser.add_argument("--keep", action="store_true", help=f"keep the {DB_NAME} database")
    parser.add_argument("--output", type=Path, default=RESULTS / "queries.json")
    args = parser.parse_args()
    if args.calls < 200:
        parser.error("--calls must be at least 200")
    create_database()
    try:
        results = asyncio.run(run(args))
    finally:
        if not args.keep:
            drop_database()
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

"""Worker start-up against a large fleet in the database: ``python -m bench.startup``.

Issue #23: a worker's memory and start-up must not grow with the devices the database
holds (target: at 10M devices within 10% of the 10,000-device case). Measured in a private
PostgreSQL server (``bench.private_postgres``: a cluster in ``/var/tmp/bench-startup-*``
on a free port, the stack's settings for this host, autovacuum off so that no background
vacuum of the seeded tables runs during a measurement, the schema migrated), so the stack
is neither read nor changed. For each fleet size N of ``--sizes``, in increasing order and in
the same database:

1. grows ``devices`` and ``storage.series`` to N devices (``fleet-00000001``...) with
   ``--metrics`` series each (``INSERT ... SELECT generate_series``, 1M devices a
   transaction), then ``VACUUM ANALYZE`` both;
2. empties the storage hypertables and puts the backlog devices' ``first_seen`` and
   ``last_seen`` back to the seeded value, so each size starts from the same state;
3. starts a private Tansu broker (``bench.private_broker``) and publishes to it, through
   ``DeviceProducer`` in shared topic mode, a backlog of ``--readings`` readings x
   ``--metrics`` metrics for each of ``--devices`` devices: the first seeded ids, so the
   worker's per-device lookups find their rows;
4. launches a worker (``faust -A streams.app worker``, ``bench.queries.bench_worker``) on
   that broker, straight to the private server with ``DB_STATEMENT_CACHE=true``, a fresh
   ``APP_ID``, maintenance off, and measures from the launch: seconds to the first row in
   ``storage.readings``, seconds until the whole backlog is stored (its committed-row
   count, then the exact row count), the peak RSS of its process tree (psutil, every
   0.1 s) and its RSS at the first row; and the rows of ``devices`` and ``storage.series``
   PostgreSQL read for it (``pg_stat_user_tables``);
5. stops the worker (SIGTERM, then SIGKILL) and kills the broker, by their pids.

At the end the server is stopped and the folder removed (``--keep-dir`` keeps it). Writes
``bench/results/startup.json`` and prints a table. Needs root (the server runs as
``postgres``) and, for 10M devices, about 12 GB free under /var/tmp and a few minutes of
seeding.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.private_postgres import Server, private_database, run_with_servers, stack_tuning
from bench.private_broker import PrivateBroker, running_broker
from bench.queries import RESULTS, bench_worker, command, connect, machine, save_results
from bench.worker_process import WorkerProcess
from producers.device_producer import DeviceProducer, ProducerConfig
from streams.settings import Settings

MB = 1_000_000
SEED_STEP = 1_000_000  # devices per seeding transaction
SAMPLE_SECONDS = 0.1
_DEVICE_ID = "'fleet-' || lpad(i::text, 8, '0')"  # fleet_device(i), in SQL
_SEED_DEVICES = f"""
INSERT INTO devices (device_id, first_seen, last_seen)
SELECT {_DEVICE_ID}, $3, $3 FROM generate_series($1::int, $2::int) AS i
"""
_SEED_SERIES = f"""
INSERT INTO storage.series (device_id, metric)
SELECT {_DEVICE_ID}, 'm' || m FROM generate_series($1::int, $2::int) AS i
CROSS JOIN generate_series(0, $3::int - 1) AS m
"""
_TABLE_READS = """
SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) AS rows
FROM pg_stat_user_tables
WHERE (schemaname, relname) IN (('public', 'devices'), ('storage', 'series'))
"""


def fleet_device(i: int) -> str:
    """The id of the ``i``-th seeded device (from 1)."""
    return f"fleet-{i:08d}"


async def grow(conn: asyncpg.Connection, have: int, want: int, metrics: int,
               seen: datetime) -> None:
    """Add devices ``have + 1`` to ``want`` and their series, then VACUUM ANALYZE."""
    for start in range(have, want, SEED_STEP):
        stop = min(start + SEED_STEP, want)
        async with conn.transaction():
            await conn.execute(_SEED_DEVICES, start + 1, stop, seen)
            await conn.execute(_SEED_SERIES, start + 1, stop, metrics)
        print(f"  seeded {stop:,} devices", flush=True)
    await conn.execute("VACUUM ANALYZE devices, storage.series")


async def reset(conn: asyncpg.Connection, devices: list[str], seen: datetime) -> None:
    """What the previous size's worker wrote is gone; its devices are as seeded."""
    await conn.execute("TRUNCATE storage.readings, storage.readings_1m, storage.readings_1h")
    await conn.execute("UPDATE devices SET first_seen = $2, last_seen = $2 "
                       "WHERE device_id = ANY($1)", devices, seen)


async def publish_backlog(settings: Settings, devices: list[str], readings: int,
                          metrics: int, start: datetime) -> int:
    """``readings`` readings a second apart of each device, from ``start``; the points."""
    start_ms = int(start.timestamp() * 1000)
    names = [f"m{m}" for m in range(metrics)]
    async with DeviceProducer(settings, ProducerConfig.from_settings(settings)) as producer:
        for k in range(readings):
            await producer.send_many(
                {"device_id": d, "time": start_ms + k * 1000,
                 "metrics": {name: float((k * 7 + j + n) % 1000) for j, name in enumerate(names)}}
                for n, d in enumerate(devices))
        await producer.flush()
    return readings * len(devices) * metrics


def tree_rss_mb(process: psutil.Process) -> float:
    """Resident memory of ``process`` and its descendants, MB."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass  # ended meanwhile
    return total / MB


async def table_reads(conn: asyncpg.Connection) -> dict[str, int]:
    """Rows read so far from ``devices`` and ``storage.series`` (scans and index fetches)."""
    return {r["relname"]: r["rows"] for r in await conn.fetch(_TABLE_READS)}


async def rows_written(http: aiohttp.ClientSession, worker: WorkerProcess) -> int:
    """The rows the worker has committed to ``storage.readings`` (0 until it serves)."""
    try:
        async with http.get(f"http://127.0.0.1:{worker.web_port}/pipeline/throughput") as r:
            return (await r.json())["rows_written_total"]
    except aiohttp.ClientError:
        return 0


async def measure(worker: WorkerProcess, conn: asyncpg.Connection, points: int,
                  timeout: float) -> dict[str, float]:
    """Launch ``worker``; sample its RSS every 0.1 s until it has stored ``points`` rows."""
    launched = time.monotonic()
    worker.start()
    process = psutil.Process(worker.process.pid)
    first_row = rss_at_first_row = None
    peak = 0.0
    async with aiohttp.ClientSession() as http:
        while True:
            tick = time.monotonic()
            rss = tree_rss_mb(process)
            peak = max(peak, rss)
            now = tick - launched
            if first_row is None:
                if await conn.fetchval("SELECT EXISTS (SELECT FROM storage.readings)"):
                    first_row, rss_at_first_row = now, rss
            elif await rows_written(http, worker) >= points:
                return {"first_row_seconds": round(first_row, 2),
                        "drained_seconds": round(now, 2), "peak_rss_mb": round(peak, 1),
                        "rss_at_first_row_mb": round(rss_at_first_row or 0, 1)}
            if worker.process.poll() is not None:
                raise RuntimeError(f"the worker exited after {now:.0f} s\n{worker.log_tail()}")
            if now > timeout:
                raise RuntimeError(f"the worker has not stored the backlog after {now:.0f} s\n"
                                   f"{worker.log_tail()}")
            await asyncio.sleep(max(0.0, tick + SAMPLE_SECONDS - time.monotonic()))


async def run_size(conn: asyncpg.Connection, settings: Settings, root: Path,
                   args: argparse.Namespace, size: int, seen: datetime) -> dict[str, Any]:
    """One fleet size's start-up, on a fresh broker, from the same stored state."""
    devices = [fleet_device(i) for i in range(1, args.devices + 1)]
    await reset(conn, devices, seen)
    async with running_broker(f"bench-startup-{size}", root) as broker:
        points = await publish_backlog(broker.settings(TOPIC_MODE="shared"), devices,
                                       args.readings, args.metrics,
                                       datetime.now(timezone.utc) - timedelta(hours=1))
        worker = consuming_worker(settings, broker)
        reads_before = await table_reads(conn)
        try:
            figures = await measure(worker, conn, points, args.timeout)
        finally:
            worker.stop()
        await asyncio.sleep(1)  # the worker's backends have flushed their table statistics
        reads_after = await table_reads(conn)
        discard(worker)
    stored = await conn.fetchval("SELECT count(*) FROM storage.readings")
    if stored != points:
        raise RuntimeError(f"{size:,} devices: {stored:,} rows stored, {points:,} expected")
    sizes = await conn.fetchrow(
        "SELECT pg_database_size(current_database()) AS database, "
        "pg_total_relation_size('devices') AS devices, "
        "pg_total_relation_size('storage.series') AS series")
    return {"devices": size, "series": size * args.metrics, "backlog_points": points,
            "database_mb": round(sizes["database"] / MB), "devices_table_mb":
            round(sizes["devices"] / MB), "series_table_mb": round(sizes["series"] / MB),
            **figures,
            "rows_read": {t: reads_after[t] - reads_before[t] for t in reads_before}}


def consuming_worker(settings: Settings, broker: PrivateBroker) -> WorkerProcess:
    """A worker consuming ``broker``'s shared topic, writing straight to the private server
    of ``settings`` (no pgBouncer), maintenance off."""
    return bench_worker(
        settings, **broker.worker_env(), TOPIC_MODE="shared", DEVICE_FILTER="",
        DB_USER=settings.db.user, DB_PASSWORD=settings.db.password,
        DB_STATEMENT_CACHE="true", MAINTENANCE_INTERVAL="0")


def discard(worker: WorkerProcess) -> None:
    """Remove a stopped worker's log and data dir (kept when it failed: see the error)."""
    worker.log_path.unlink(missing_ok=True)
    shutil.rmtree(worker.env["DATA_DIR"], ignore_errors=True)


async def run(args: argparse.Namespace, root: Path, servers: list[Server]) -> dict[str, Any]:
    tuning = stack_tuning() | {"autovacuum": "off"}
    settings = await private_database("fleet", root, servers, tuning)
    seen = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    conn = await connect(settings)
    try:
        results: dict[str, Any] = {
            "command": command("bench.startup"),
            "machine": machine(),
            "postgres": await conn.fetchval("SHOW server_version"),
            "settings": tuning,
            "backlog": {"devices": args.devices, "readings_per_device": args.readings,
                        "metrics": args.metrics, "topic_mode": "shared"},
            "sizes": []}
        have = 0
        for size in args.sizes:
            print(f"{size:,} devices: seeding ...", flush=True)
            started = time.perf_counter()
            await grow(conn, have, size, args.metrics, seen)
            have = size
            seed_seconds = round(time.perf_counter() - started, 1)
            print(f"{size:,} devices: worker start-up ...", flush=True)
            result = await run_size(conn, settings, root, args, size, seen)
            result["seed_seconds"] = seed_seconds
            results["sizes"].append(result)
            print(f"  {_line(result)}", flush=True)
    finally:
        await conn.close()
    smallest, largest = results["sizes"][0], results["sizes"][-1]
    results["largest_vs_smallest"] = {
        key: round(largest[key] / smallest[key], 3)
        for key in ("first_row_seconds", "drained_seconds", "peak_rss_mb")}
    return results


def _line(r: dict[str, Any]) -> str:
    return (f"{r['devices']:>12,} | {r['database_mb']:>9,} | {r['first_row_seconds']:>9.2f} | "
            f"{r['drained_seconds']:>9.2f} | {r['peak_rss_mb']:>8.1f} | "
            f"{r['rss_at_first_row_mb']:>8.1f} | {r['rows_read']['devices']:>8,} | "
            f"{r['rows_read']['series']:>8,}")


def report(results: dict[str, Any]) -> list[str]:
    header = ("     devices | database MB | first row s | drained s | peak RSS MB | "
              "RSS at first row MB | devices rows read | series rows read")
    ratios = results["largest_vs_smallest"]
    return [header, *(_line(r) for r in results["sizes"]),
            f"largest / smallest: first row {ratios['first_row_seconds']}, drained "
            f"{ratios['drained_seconds']}, peak RSS {ratios['peak_rss_mb']} (target: <= 1.1)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda text: sorted(int(s) for s in text.split(",")),
                        default=[10_000, 1_000_000, 10_000_000],
                        help="comma-separated fleet sizes in the database")
    parser.add_argument("--devices", type=int, default=1000, help="devices in the backlog")
    parser.add_argument("--readings", type=int, default=100,
                        help="readings per backlog device")
    parser.add_argument("--metrics", type=int, default=5, help="metrics (series) per device")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per worker")
    parser.add_argument("--keep-dir", action="store_true",
                        help="keep the run's folder (data dir, logs); the server is stopped")
    parser.add_argument("--output", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    if args.devices > args.sizes[0]:
        parser.error("--devices must not exceed the smallest of --sizes")
    results = run_with_servers(parser, "bench-startup-", args.keep_dir,
                               functools.partial(run, args))
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

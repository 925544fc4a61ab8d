"""Points/s of one, two and three workers sharing ``device-data`` (TOPIC_MODE=shared).

Each run gets a Tansu broker of its own with ``device-data`` in 12 partitions (so one, two
or three workers split it evenly), starts the workers in one consumer group, waits until
they hold disjoint shares of the partitions and have stored one warm-up reading per
device, then publishes the load from a child process and times it until every point is
stored (the sum of the workers' ``rows_written_total``, checked against the database
after). Runs alternate 1, 2, 3 workers; the medians and their ratio to one worker go to
``bench/results/shared_workers.json``. Rows stay in the stack's database, as with
``bench.pipeline``.

    .venv/bin/python -m bench.shared_workers [--runs 2] [--readings 60000]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.private_broker import running_broker
from bench.queries import RESULTS, save_results
from bench.worker_process import WorkerProcess, disjoint_shares, fleet
from sinks.postgres import connect_kwargs
from streams.settings import Settings
from streams.topics import SHARED_TOPIC, TopicProvisioner

PARTITIONS = 12
METRICS = 5
PER_MESSAGE = 20


def publish(settings: Settings, devices: list[str], readings: int, start_ms: int) -> None:
    """Child process: ``readings`` readings round-robin over ``devices``, ``PER_MESSAGE``
    of one device per message, as fast as the producer goes."""
    from producers.device_producer import DeviceProducer, ProducerConfig

    async def run() -> None:
        config = ProducerConfig(max_batch_readings=PER_MESSAGE, linger=0.02)
        async with DeviceProducer(settings, config) as producer:
            for start in range(0, readings, len(devices) * PER_MESSAGE):
                await producer.send_many([
                    {"device_id": devices[i % len(devices)], "time": start_ms + i,
                     "metrics": {f"m{j}": float((i + j) % 1000) for j in range(METRICS)}}
                    for i in range(start, min(start + len(devices) * PER_MESSAGE, readings))])
            await producer.flush()
    asyncio.run(run())


async def stored(workers: list[WorkerProcess]) -> int:
    """The rows the workers have written between them (their ``rows_written_total``)."""
    total = 0
    for worker in workers:
        status, body = await worker.get("/pipeline/throughput")
        total += body["rows_written_total"] if status == 200 else 0
    return total


async def split(workers: list[WorkerProcess]) -> bool:
    """Whether the workers hold disjoint shares of device-data, all of it between them."""
    shares = await disjoint_shares(workers, SHARED_TOPIC)
    return shares is not None and len(shares) == PARTITIONS


async def until(check: Any, timeout: float, what: str, workers: list[WorkerProcess]) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"a worker exited:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def one_run(count: int, readings: int, devices_n: int) -> dict[str, Any]:
    devices, only = fleet(f"bench-shared-{count}w-", devices_n)
    ctx = multiprocessing.get_context("spawn")
    async with running_broker(f"bench-shared-{count}") as broker:
        async with TopicProvisioner(broker.settings()) as topics:
            await topics.ensure([SHARED_TOPIC], partitions=PARTITIONS)
        env = {"TOPIC_MODE": "shared", "DEVICE_FILTER": only, **broker.worker_env()}
        first = WorkerProcess(f"bench-shared-{count}-1", **env).start()
        workers = [first] + [
            WorkerProcess(f"bench-shared-{count}-{n}", APP_ID=first.env["APP_ID"], **env).start()
            for n in range(2, count + 1)]
        settings = broker.settings(TOPIC_MODE="shared")
        start_ms = int(time.time() * 1000) - 3 * 3600 * 1000

        async def reached(points: int) -> bool:
            return await stored(workers) >= points

        try:
            await until(lambda: split(workers), 180, "the partitions split", workers)
            warm = ctx.Process(target=publish, args=(settings, devices, len(devices),
                                                     start_ms - 60_000))
            warm.start()
            await asyncio.get_running_loop().run_in_executor(None, warm.join)
            warm_points = len(devices) * METRICS
            await until(lambda: reached(warm_points), 120, "the warm-up rows", workers)
            expected = warm_points + readings * METRICS
            load = ctx.Process(target=publish, args=(settings, devices, readings, start_ms))
            began = time.monotonic()
            load.start()
            await until(lambda: reached(expected), 600, f"{expected} rows", workers)
            seconds = time.monotonic() - began
            await asyncio.get_running_loop().run_in_executor(None, load.join)
        finally:
            for worker in workers:
                worker.stop(timeout=30)
    rows = await _count_rows(devices)
    if rows != expected:
        raise RuntimeError(f"{count} worker(s): {rows} rows stored, {expected} expected")
    return {"workers": count, "points": readings * METRICS, "seconds": round(seconds, 2),
            "points_per_s": round(readings * METRICS / seconds)}


async def _count_rows(devices: list[str]) -> int:
    conn = await asyncpg.connect(**connect_kwargs(Settings.from_env().as_owner()))
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM storage.readings r JOIN storage.series s USING (series_id) "
            "WHERE s.device_id = ANY($1)", devices)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for round_ in range(args.runs):
        for count in (1, 2, 3):
            result = await one_run(count, args.readings, args.devices)
            runs.append(result)
            print(f"  round {round_ + 1}, {count} worker(s): {result['points_per_s']:,} points/s "
                  f"({result['seconds']} s)", flush=True)
    medians = {str(n): statistics.median(r["points_per_s"] for r in runs if r["workers"] == n)
               for n in (1, 2, 3)}
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {"partitions": PARTITIONS, "devices": args.devices, "metrics": METRICS,
                  "readings_per_message": PER_MESSAGE, "readings_per_run": args.readings,
                  "runs_per_count": args.runs},
        "runs": runs,
        "median_points_per_s": medians,
        "ratio_to_one_worker": {n: round(v / medians["1"], 3) for n, v in medians.items()},
    }


def report(results: dict[str, Any]) -> list[str]:
    medians, ratios = results["median_points_per_s"], results["ratio_to_one_worker"]
    return [f"shared topic, {n} worker(s): {medians[n]:,.0f} points/s (x{ratios[n]} of one)"
            for n in medians]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per worker count (median)")
    parser.add_argument("--readings", type=int, default=60_000, help="readings per run")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS / "shared_workers.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

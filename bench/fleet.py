"""Fleets of 1,000 to 1,000,000 devices in shared topic mode: ``python -m bench.fleet``.

Issue #17's targets on this 2-core machine: points/s at 1,000,000 known devices at least
80% of points/s at 1,000; the worker's RSS at most 1 GB at 1,000,000 devices; onboarding
1,000,000 new devices at no less than half the known-device rate.

Everything runs in a private PostgreSQL server (``bench.private_postgres``: a cluster in
``/var/tmp/bench-fleet-*``, the stack's settings for this host, the schema migrated), so
the stack is neither read nor changed. For each size N of ``--sizes``, in increasing order,
with a private Tansu broker (``device-data`` in its default 10 partitions) and a new worker
(``TOPIC_MODE=shared``, ``bench.startup.consuming_worker``: straight to the server):

1. **new**: one reading of ``--metrics`` metrics for each of N devices never seen, one
   reading per message, published by ``--publishers`` child processes as fast as they go
   (pre-generated), timed from the first publish until the worker has committed every
   point (its ``rows_written_total``): ``points_per_s_new``, the onboarding rate. Below
   100,000 devices this phase lasts under a second and its rate is mostly start-up noise;
2. **known**: ``ceil(--messages / N)`` more readings of each of those devices, round robin,
   one per message, timed the same way: ``points_per_s``;
3. **half load**: readings of the same devices at half the known rate for
   ``--latency-seconds``, with probe devices publishing readings stamped with the wall
   clock every 50 ms, whose rows are polled every 25 ms: ``latency_p99_s``.

For each phase it reports the sink's seconds per batch in series resolution, COPY and
merge (``sink_phase_seconds_total`` over ``sink_batches_total``). For each size: the
worker's peak RSS (``VmHWM``), the rows and total size of ``storage.series`` and
``devices`` (the server holds the smaller sizes' devices too), and it checks that every
published reading is stored once (exact row count). Writes ``bench/results/fleet.json``
and ``bench/results/fleet.png``. Needs root (the server runs as ``postgres``).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import math
import multiprocessing
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg

from bench.private_postgres import Server, private_database, run_with_servers, stack_tuning
from bench.pipeline import poll_probes, probe_process, quantile
from bench.private_broker import running_broker
from bench.queries import RESULTS, command, connect, machine, save_results
from bench.startup import consuming_worker, discard
from bench.worker_process import WorkerProcess
from producers.device_producer import DeviceProducer, ProducerConfig
from streams.settings import Settings

MB = 1_000_000
PROBES = 4
_STORED = """
SELECT count(*) FROM storage.readings r JOIN storage.series s USING (series_id)
WHERE s.device_id LIKE $1 AND s.metric <> 'probe'
"""
_TABLES = """
SELECT (SELECT count(*) FROM storage.series) AS series_rows,
       (SELECT count(*) FROM devices) AS devices_rows,
       pg_total_relation_size('storage.series') AS series_bytes,
       pg_total_relation_size('devices') AS devices_bytes
"""


def device_ids(prefix: str, count: int, shard: int = 0, shards: int = 1) -> list[str]:
    """Devices ``shard``, ``shard + shards``, ... of a fleet of ``count``."""
    return [f"{prefix}{i:07d}" for i in range(shard, count, shards)]


def publish_process(settings: Settings, devices: list[str], first_round: int, readings: int,
                    metrics: int, start_ms: int, period_ms: int, rate: float, go: Any,
                    results: Any) -> None:
    """Child process: ``readings`` readings of ``devices``, round robin from round
    ``first_round`` (round k at ``start_ms`` + k ``period_ms``), one reading per message;
    ``rate`` readings/s (0 = as fast as it goes)."""

    async def run() -> None:
        names = [f"m{j}" for j in range(metrics)]
        count = len(devices)
        data = [{"device_id": devices[i % count],
                 "time": start_ms + (first_round + i // count) * period_ms,
                 "metrics": {m: float((i * 7 + j) % 1000) for j, m in enumerate(names)}}
                for i in range(readings)]
        gc.disable()  # a load generator: its objects are freed by reference counting
        async with DeviceProducer(settings, ProducerConfig(max_batch_readings=1,
                                                           linger=0.02)) as producer:
            results.put(("ready", len(data)))
            go.wait()
            first = time.time()
            if rate:
                chunk = max(1, int(rate / 50))  # a send every 20 ms
                for sent in range(0, len(data), chunk):
                    due = first + sent / rate
                    if due > time.time():
                        await asyncio.sleep(due - time.time())
                    await producer.send_many(data[sent:sent + chunk])
            else:
                await producer.send_many(data)
            await producer.flush()
        results.put(("done", first, time.time()))

    asyncio.run(run())


class FleetRun:
    """One fleet size: its broker, worker and devices."""

    def __init__(self, args: argparse.Namespace, settings: Settings, conn: asyncpg.Connection,
                 size: int) -> None:
        self.args, self.settings, self.conn, self.size = args, settings, conn, size
        self.prefix = f"fleet{size}-"
        self.ctx = multiprocessing.get_context("spawn")
        # Each device reads once a period: the fleet as a whole --event-rate readings a
        # second of event time, so a large fleet's readings are as sparse per series as a
        # real one's (not a million devices reading every second).
        self.period_ms = max(1, round(size / args.event_rate * 1000))
        self.start_ms = int((datetime.now(timezone.utc) - timedelta(days=2)).timestamp()
                            * 1000)
        self.rounds_done = 0  # rounds of readings published, whole or in part
        self.published = 0  # readings published, all phases

    async def stats(self, worker: WorkerProcess) -> dict[str, Any]:
        status, body = await worker.get("/pipeline/throughput")
        if status != 200:
            raise RuntimeError(f"/pipeline/throughput answered {status}: {body}")
        return body

    async def until_stored(self, worker: WorkerProcess, rows: int, timeout: float) -> float:
        """Wait until the worker has committed ``rows`` rows in all; when (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while (await self.stats(worker))["rows_written_total"] < rows:
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{rows:,} rows not stored\n{worker.log_tail()}")
            await asyncio.sleep(0.05)
        return time.time()

    def publishers(self, broker_settings: Settings, readings: int, count: int, rate: float,
                   go: Any, results: Any) -> list[Any]:
        """``count`` publishers of ``readings`` readings in all, over the fleet's devices in
        the next rounds, at ``rate`` readings/s in all (0 = as fast as they go)."""
        processes: list[Any] = []  # spawn-context processes
        for shard in range(count):
            devices = device_ids(self.prefix, self.size, shard, count)
            share = readings * len(devices) // self.size
            process = self.ctx.Process(target=publish_process, daemon=True, args=(
                broker_settings, devices, self.rounds_done, share, self.args.metrics,
                self.start_ms, self.period_ms, rate / count, go, results))
            process.start()
            processes.append(process)
            self.published += share
        self.rounds_done += math.ceil(readings / self.size)
        return processes

    async def phase(self, name: str, worker: WorkerProcess, broker_settings: Settings,
                    rounds: int) -> dict[str, Any]:
        """Publish ``rounds`` readings of every device as fast as they go; time them."""
        loop = asyncio.get_running_loop()
        go, results = self.ctx.Event(), self.ctx.Queue()
        processes = self.publishers(broker_settings, rounds * self.size,
                                    self.args.publishers, 0, go, results)
        for _ in processes:
            assert (await loop.run_in_executor(None, results.get))[0] == "ready"
        before = await self.stats(worker)
        points = rounds * self.size * self.args.metrics
        go.set()
        done = await self.until_stored(worker, before["rows_written_total"] + points,
                                       self.args.timeout)
        after = await self.stats(worker)
        finished = [await loop.run_in_executor(None, results.get) for _ in processes]
        for process in processes:
            process.join()
        first = min(f for _, f, _ in finished)
        seconds = done - first
        batches = after["sink_batches_total"] - before["sink_batches_total"]
        per_batch = {
            f"sink_{phase}_ms_per_batch": round(
                (after["sink_phase_seconds_total"][phase]
                 - before["sink_phase_seconds_total"][phase]) / batches * 1000, 1)
            for phase in after["sink_phase_seconds_total"]}
        result = {"points": points, "seconds": round(seconds, 2),
                  "publish_seconds": round(max(last for *_, last in finished) - first, 2),
                  "points_per_s": round(points / seconds), "batches": batches,
                  "checked_points": after["sink_checked_points_total"]
                  - before["sink_checked_points_total"], **per_batch}
        print(f"  {name}: {result}", flush=True)
        return result

    async def half_load(self, worker: WorkerProcess, broker_settings: Settings,
                        points_per_s: float) -> dict[str, Any]:
        """Publish at half ``points_per_s`` with probes; their publish-to-row latencies."""
        loop = asyncio.get_running_loop()
        seconds = self.args.latency_seconds
        rate = points_per_s / 2 / self.args.metrics  # readings per second
        go, results = self.ctx.Event(), self.ctx.Queue()
        processes = self.publishers(broker_settings, int(rate * seconds), 1, rate, go, results)
        probes = device_ids(f"{self.prefix}probe-", PROBES)
        prober = self.ctx.Process(target=probe_process, daemon=True,
                                  args=(broker_settings, probes, seconds, go, results))
        prober.start()
        for _ in range(2):
            assert (await loop.run_in_executor(None, results.get))[0] == "ready"
        go.set()
        latencies, _ = await poll_probes(self.conn, probes, seconds, worker.process.pid)
        for _ in range(2):
            await loop.run_in_executor(None, results.get)
        for process in (*processes, prober):
            process.join()
        latencies.sort()
        return {"rate_points_per_s": round(rate * self.args.metrics),
                "probes": len(latencies), "latency_p50_s": quantile(latencies, 0.5),
                "latency_p99_s": quantile(latencies, 0.99)}

    async def warm_up(self, worker: WorkerProcess, broker_settings: Settings) -> None:
        """One reading of a device outside the fleet, stored: the worker has joined."""
        await worker.answering("/pipeline/throughput", 200)
        reading = {"device_id": f"warm-up-{self.size}", "time": self.start_ms,
                   "metrics": {"probe": 1.0}}
        async with DeviceProducer(broker_settings, ProducerConfig()) as producer:
            await producer.send_many([reading], wait=True)
        await self.until_stored(worker, 1, 120)

    async def stored(self, timeout: float) -> int:
        """The fleet's rows (probes left out), once they are as many as published or
        ``timeout`` seconds have passed."""
        expected = self.published * self.args.metrics
        deadline = time.monotonic() + timeout
        while (stored := await self.conn.fetchval(_STORED, self.prefix + "%")) < expected \
                and time.monotonic() < deadline:
            await asyncio.sleep(1)
        return stored

    async def run(self) -> dict[str, Any]:
        args = self.args
        print(f"{self.size:,} devices", flush=True)
        async with running_broker(f"bench-fleet-{self.size}") as broker:
            broker_settings = broker.settings(TOPIC_MODE="shared")
            worker = consuming_worker(self.settings, broker).start()
            try:
                await self.warm_up(worker, broker_settings)
                new = await self.phase("new", worker, broker_settings, 1)
                known = await self.phase("known", worker, broker_settings,
                                         max(1, math.ceil(args.messages / self.size)))
                latency = await self.half_load(worker, broker_settings, known["points_per_s"])
                print(f"  half load: {latency}", flush=True)
                rss = worker_rss_mb(worker)
                stored = await self.stored(args.timeout)
            finally:
                worker.stop()
            discard(worker)
        if stored != self.published * args.metrics:
            raise RuntimeError(f"{self.size:,} devices: {stored:,} rows stored, "
                               f"{self.published * args.metrics:,} expected")
        tables = await self.conn.fetchrow(_TABLES)
        return {"devices": self.size, "series": self.size * args.metrics,
                "points_per_s": known["points_per_s"],
                "points_per_s_new": new["points_per_s"], **rss,
                "latency_p50_s": latency["latency_p50_s"],
                "latency_p99_s": latency["latency_p99_s"],
                "series_rows": tables["series_rows"], "devices_rows": tables["devices_rows"],
                "series_table_mb": round(tables["series_bytes"] / MB, 1),
                "devices_table_mb": round(tables["devices_bytes"] / MB, 1),
                "stored_rows": stored, "new": new, "known": known, "half_load": latency}


def worker_rss_mb(worker: WorkerProcess) -> dict[str, float]:
    """The worker's resident memory now and at its peak (``VmRSS``, ``VmHWM``), MB."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{worker.process.pid}/status").read_text().splitlines())
    return {"worker_rss_mb": round(int(fields["VmHWM"].split()[0]) * 1024 / MB, 1),
            "worker_rss_end_mb": round(int(fields["VmRSS"].split()[0]) * 1024 / MB, 1)}


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue #17's three targets, from the smallest and the largest fleet measured."""
    smallest, largest = runs[0], runs[-1]
    known_ratio = largest["points_per_s"] / smallest["points_per_s"]
    onboarding = largest["points_per_s_new"] / largest["points_per_s"]
    return {
        "largest_vs_smallest_known": round(known_ratio, 3),
        "largest_onboarding_vs_known": round(onboarding, 3),
        "largest_worker_rss_mb": largest["worker_rss_mb"],
        "met": {"known_at_least_80_percent": known_ratio >= 0.8,
                "onboarding_at_least_50_percent": onboarding >= 0.5,
                "rss_at_most_1_gb": largest["worker_rss_mb"] <= 1000},
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["devices"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(sizes, [r["points_per_s"] for r in runs], "o-", label="known devices")
    left.plot(sizes, [r["points_per_s_new"] for r in runs], "s--", label="new devices")
    left.set_xscale("log")
    left.set_xlabel("devices (5 series each)")
    left.set_ylabel("points/s, end to end")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(sizes, [r["worker_rss_mb"] for r in runs], "o-")
    right.axhline(1000, color="grey", linestyle=":", label="target: 1 GB")
    right.set_xscale("log")
    right.set_xlabel("devices")
    right.set_ylabel("worker peak RSS, MB")
    right.set_ylim(bottom=0)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(results: dict[str, Any]) -> list[str]:
    lines = ["| devices | points/s known | points/s new | worker peak RSS MB | p99 latency s "
             "| series table MB | known: resolve / COPY / merge ms per batch |",
             "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        k = r["known"]
        lines.append(f"| {r['devices']:,} | {r['points_per_s']:,} | {r['points_per_s_new']:,} | "
                     f"{r['worker_rss_mb']:,.0f} | {r['latency_p99_s']} | "
                     f"{r['series_table_mb']:,.0f} | {k['sink_resolve_ms_per_batch']} / "
                     f"{k['sink_copy_ms_per_batch']} / {k['sink_merge_ms_per_batch']} |")
    return lines + [f"targets: {results['targets']}"]


async def run(args: argparse.Namespace, root: Path, servers: list[Server]) -> dict[str, Any]:
    settings = await private_database("fleet", root, servers, stack_tuning())
    conn = await connect(settings)
    try:
        results: dict[str, Any] = {
            "command": command("bench.fleet"),
            "machine": machine(),
            "postgres": await conn.fetchval("SHOW server_version"),
            "metrics_per_device": args.metrics, "publishers": args.publishers,
            "event_rate_readings_per_s": args.event_rate,
            "known_messages": args.messages, "runs": []}
        for size in args.sizes:
            results["runs"].append(await FleetRun(args, settings, conn, size).run())
    finally:
        await conn.close()
    results["targets"] = targets(results["runs"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda text: sorted(int(s) for s in text.split(",")),
                        default=[1_000, 10_000, 100_000, 1_000_000],
                        help="comma-separated fleet sizes")
    parser.add_argument("--metrics", type=int, default=5, help="metrics (series) per device")
    parser.add_argument("--messages", type=int, default=300_000,
                        help="messages (one reading each) of the known phase, at least one "
                             "reading per device")
    parser.add_argument("--event-rate", type=float, default=10_000,
                        help="readings per second of event time across the fleet: each "
                             "device reads once every devices / event-rate seconds")
    parser.add_argument("--publishers", type=int, default=2,
                        help="publishing processes of the new and known phases")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    parser.add_argument("--keep-dir", action="store_true",
                        help="keep the run's folder (data dir, logs); the server is stopped")
    parser.add_argument("--output", type=Path, default=RESULTS / "fleet.json")
    args = parser.parse_args()
    results = run_with_servers(parser, "bench-fleet-", args.keep_dir,
                               functools.partial(run, args))
    plot(results["runs"], args.output.with_suffix(".png"))
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

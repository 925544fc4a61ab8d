"""End-to-end pipeline benchmark: ``make bench`` (or ``python -m bench.pipeline --help``).

Against the running local stack, for two workloads:

- ``single``: one reading with one metric per message (100 devices);
- ``batched``: arrays of 100 readings x 5 metrics per message (1,000 devices);

it publishes pre-generated readings through ``DeviceProducer`` (in separate processes) as
fast as they go, and measures from the first publish until every row is committed. The
publishers are load generators sharing the 2 cores with what is measured: they publish
with Python's cyclic garbage collector paused (their objects are freed by reference
counting), which with 100k one-reading messages in one ``send_many`` had cost them about
a third of their CPU; their CPU per point is reported with every run. Each
figure is the median of ``--runs`` runs, for our worker and, in the same run, for the
baseline (``bench.baseline``: a take() batch + plain COPY, no validation or dedupe).
Publish-to-row latency is measured at a steady rate of half our maximum, with probe
devices whose rows are polled every 25 ms (so latencies carry up to 25 ms of polling
error). A soak at half load reports the worker's RSS at its start and end. Each run also
reports the CPU used by the database (PostgreSQL and pgBouncer) and the broker, and checks
the stored row count.

Each run has a Tansu broker of its own (``bench.private_broker``, a free port, killed by
its pid when the run ends), so its figures do not depend on the topics that ``make run``,
the tests or an earlier run left on the stack's broker (:9092), which it never touches.
The database is the stack's (through pgBouncer): its size at the start is reported.

Writes ``bench/results/latest.json``, ``bench/results/report.md`` and
``bench/results/throughput.png``.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
from tqdm import tqdm

from bench.private_broker import PrivateBroker, running_broker
from sinks.postgres import connect_kwargs
from streams.settings import Settings
from streams.topics import TopicProvisioner, device_topic
from bench.worker_process import WorkerProcess, fleet

RESULTS = Path(__file__).resolve().parent / "results"
PROBES = 10  # devices whose readings measure latency
PROBE_INTERVAL = 0.05  # seconds between two readings of one probe device
DATABASE = ("postgres", "pgbouncer")  # process names whose CPU the report adds up
STACK_DB = Settings.from_env({})  # the stack's database, through pgBouncer, as the workers'


@dataclass(frozen=True)
class Workload:
    name: str
    devices: int
    per_message: int
    metrics: int
    messages: int
    publishers: int
    partitions: int

    @property
    def points(self) -> int:
        return self.messages * self.per_message * self.metrics


WORKLOADS = {
    "single": Workload("single", devices=100, per_message=1, metrics=1, messages=200_000,
                       publishers=2, partitions=10),
    # 1,000 topics of one partition each: at the default 10 (10,000 partitions in all) one
    # worker spends itself in per-partition bookkeeping (see
    # docs/architecture.md#topic-modes-topic_mode).
    "batched": Workload("batched", devices=1000, per_message=100, metrics=5, messages=4_000,
                        publishers=1, partitions=1),
}


# --- publishing (child processes) ---------------------------------------------------------


def _readings(workload: Workload, devices: list[str], count: int, start_ms: int) -> list[dict]:
    metrics = [f"m{j}" for j in range(workload.metrics)]
    return [
        {"device_id": devices[i % len(devices)], "time": start_ms + i // len(devices),
         "metrics": {m: float((i * 7 + j) % 1000) for j, m in enumerate(metrics)}}
        for i in range(count)
    ]


def _messages(data: list[dict], devices: int, per_message: int) -> list[list[dict]]:
    """``data`` (round-robin over the devices) as the workload's messages: ``per_message``
    consecutive readings of one device each, in time order."""
    block = devices * per_message
    return [group for start in range(0, len(data), block)
            for d in range(devices) if (group := data[start + d:start + block:devices])]


def _publish_process(settings: Settings, workload: Workload, devices: list[str], readings: int,
                     rate: float, go: Any, results: Any) -> None:
    """Publish ``readings`` readings of ``devices``; ``rate`` readings/s (0 = max).

    At a set rate each message is sent whole when due (``per_message`` readings of one
    device), so a steady load has the workload's message shape, not one reading per
    message: the worker's cost is mostly per message.
    """
    from producers.device_producer import DeviceProducer, ProducerConfig

    async def run() -> None:
        config = ProducerConfig(max_batch_readings=workload.per_message, linger=0.02)
        start_ms = int(time.time() * 1000) - 3 * 3600 * 1000
        data = _readings(workload, devices, readings, start_ms)  # pre-generated
        gc.disable()  # see the module docstring: a load generator's collector passes
        async with DeviceProducer(settings, config) as producer:
            await producer.prepare(devices)  # else a steady rate waits on each first send
            results.put(("ready", len(data)))
            go.wait()
            first, cpu = time.time(), time.process_time()
            if rate:
                sent = 0
                for message in _messages(data, len(devices), workload.per_message):
                    due = first + sent / rate
                    if due > time.time():
                        await asyncio.sleep(due - time.time())
                    await producer.send_many(message)
                    sent += len(message)
            else:
                await producer.send_many(data)
            await producer.flush()
        results.put(("done", first, time.time(), time.process_time() - cpu))

    asyncio.run(run())


def probe_process(settings: Settings, probes: list[str], seconds: float, go: Any,
                   results: Any) -> None:
    """Readings stamped with the wall clock at publish time, for the latency probes."""
    from producers.device_producer import DeviceProducer, ProducerConfig

    async def run() -> None:
        config = ProducerConfig(max_batch_readings=1, linger=0.001)
        async with DeviceProducer(settings, config) as p:
            await p.prepare(probes)
            results.put(("ready", 0))
            go.wait()
            end = time.time() + seconds
            while time.time() < end:
                now_ms = int(time.time() * 1000)
                await p.send_many({"device_id": d, "time": now_ms, "metrics": {"probe": 1.0}}
                                  for d in probes)
                await p.flush()
                await asyncio.sleep(PROBE_INTERVAL)
        results.put(("done", time.time(), time.time(), 0.0))

    asyncio.run(run())


def _start(ctx: Any, target: Any, *args: Any) -> multiprocessing.Process:
    process = ctx.Process(target=target, args=args, daemon=True)
    process.start()
    return process


# --- measuring ----------------------------------------------------------------------------


def _stat(path: Path) -> tuple[str, list[str]]:
    """A ``/proc/<pid>/stat`` file's command name and the fields after it."""
    name, fields = path.read_text().split(" (", 1)[1].rsplit(")", 1)
    return name, fields.split()


def _cpu_seconds(pid: int) -> float:
    _, fields = _stat(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _db_connect() -> asyncpg.Connection:
    """As the owner role: the benchmark creates, counts and empties the baseline's tables."""
    return await asyncpg.connect(**connect_kwargs(STACK_DB.as_owner()))


async def _create_topics(broker: PrivateBroker, names: list[str], partitions: int) -> None:
    async with TopicProvisioner(broker.settings()) as topics:
        await topics.ensure(names, partitions=partitions)


def _broker_cpu(broker: PrivateBroker) -> float:
    """CPU seconds the broker process has used so far."""
    assert broker.pid is not None, "the private broker has gone"
    times = psutil.Process(broker.pid).cpu_times()
    return times.user + times.system


def _cpu_of(*commands: str) -> float:
    """CPU seconds used so far by the processes whose command name starts with one of
    ``commands``, including their children that have ended (PostgreSQL's backends)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = _stat(stat)
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        if name.startswith(commands):
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class Target:
    """Where one implementation's rows go, and how to follow its progress cheaply.

    Our worker's stats count the rows of each transaction once it has committed; the
    baseline adds each batch's count to ``bench_baseline_progress`` in the batch's
    transaction. Both cost next to nothing to read, so polling every 50 ms takes nothing
    from what is measured (counting the rows themselves, or summing their aggregates, cost
    PostgreSQL up to a core); ``rows`` checks the exact count after the run.
    """

    table: str
    devices: list[str]
    web_port: int | None  # ours: the worker's web server
    run: str  # the baseline: the key of its progress rows

    async def points(self, conn: asyncpg.Connection, http: aiohttp.ClientSession) -> int:
        if self.web_port is None:
            return await conn.fetchval(
                "SELECT coalesce(sum(points), 0)::bigint FROM bench_baseline_progress "
                "WHERE run = $1", self.run)
        try:
            async with http.get(f"http://127.0.0.1:{self.web_port}/pipeline/throughput") as r:
                return (await r.json())["rows_written_total"]
        except aiohttp.ClientConnectionError:
            return 0  # its web server is not up yet

    async def rows(self) -> int:
        """The exact count of stored rows (slow: for the check after a run)."""
        conn = await _db_connect()
        try:
            return await conn.fetchval(
                f"SELECT count(*) FROM {self.table} WHERE device_id = ANY($1)", self.devices)
        finally:
            await conn.close()


async def _wait_rows(target: Target, expected: int, label: str, timeout: float) -> float:
    """Wait until ``expected`` points are stored; return when that was first seen (epoch s)."""
    deadline = time.monotonic() + timeout
    conn = await _db_connect()  # one session: a new one per poll costs PostgreSQL a fork
    try:
        with tqdm(total=expected, desc=label, unit="pt", unit_scale=True, leave=False) as bar:
            async with aiohttp.ClientSession() as http:
                while True:
                    count = await target.points(conn, http)
                    bar.update(count - bar.n)
                    if count >= expected:
                        return time.time()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{label}: {count} of {expected} rows after "
                                           f"{timeout:.0f}s")
                    await asyncio.sleep(0.05)
    finally:
        await conn.close()


@dataclass
class Run:
    impl: str
    workload: str
    points: int
    seconds: float
    publish_seconds: float  # first to last publish: near ``seconds``, the publisher limits
    points_per_s: float
    cpu_s_per_million: float
    db_cpu_s_per_million: float  # every PostgreSQL and pgBouncer process, during the run
    broker_cpu_s_per_million: float
    publisher_cpu_s_per_million: float  # the publisher processes', while publishing
    peak_rss_mb: float


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = multiprocessing.get_context("spawn")

    async def _worker(self, broker: PrivateBroker, impl: str, name: str, devices: list[str],
                      only: str) -> tuple[WorkerProcess, Target]:
        """Start our worker or the baseline's on ``broker``; return it and where its rows go."""
        if impl == "ours":
            # The default discovery interval, not the tests' 1 s: each round lists every topic.
            worker = WorkerProcess(name, DEVICE_FILTER=only, TOPIC_DISCOVERY_INTERVAL="5",
                                   **broker.worker_env()).start()
            return worker, Target("readings", devices, worker.web_port, "")
        from bench.baseline import TABLE

        conn = await _db_connect()
        try:
            await conn.execute(TABLE)
        finally:
            await conn.close()
        topics = ",".join(device_topic(d) for d in devices)
        worker = WorkerProcess(name, app="bench.baseline", BENCH_TOPICS=topics, BENCH_RUN=only,
                               **broker.worker_env()).start()
        # The fleet's filter is new for each run: a fitting key for its progress rows.
        return worker, Target("bench_baseline_readings", devices, None, only)

    async def _warm_up(self, broker: PrivateBroker, workload: Workload, target: Target) -> None:
        """One reading per device, so the worker has joined and subscribed everything."""
        devices = target.devices
        go, results = self.ctx.Event(), self.ctx.Queue()
        go.set()
        tiny = Workload(workload.name, len(devices), 1, 1, len(devices), 1, workload.partitions)
        process = _start(self.ctx, _publish_process, broker.settings(), tiny, devices,
                         len(devices), 0, go, results)
        await asyncio.get_running_loop().run_in_executor(None, process.join)
        await _wait_rows(target, len(devices), "warm-up", 180)

    async def _ready(self, results: Any, count: int) -> None:
        """Wait until ``count`` publisher processes have generated their data."""
        loop = asyncio.get_running_loop()
        for _ in range(count):
            assert (await loop.run_in_executor(None, results.get))[0] == "ready"

    async def _published(self, results: Any, count: int) -> tuple[float, float, float]:
        """Wait for ``count`` publishers to finish; return the first and the last publish
        time and the CPU seconds they spent publishing."""
        loop = asyncio.get_running_loop()
        done = [await loop.run_in_executor(None, results.get) for _ in range(count)]
        return (min(first for _, first, _, _ in done), max(last for _, _, last, _ in done),
                sum(cpu for *_, cpu in done))

    async def throughput(self, impl: str, workload: Workload, run: int) -> Run:
        devices, only = fleet(f"bench-{workload.name}-", workload.devices)
        name = f"bench-{impl}-{workload.name}-{run}"
        async with running_broker(name) as broker:
            await _create_topics(broker, [device_topic(d) for d in devices], workload.partitions)
            worker, target = await self._worker(broker, impl, name, devices, only)
            try:
                await self._warm_up(broker, workload, target)
                go, results = self.ctx.Event(), self.ctx.Queue()
                total = workload.messages * workload.per_message
                shards = [devices[i::workload.publishers] for i in range(workload.publishers)]
                processes = [
                    _start(self.ctx, _publish_process, broker.settings(), workload, shard,
                           total // workload.publishers, 0, go, results)
                    for shard in shards
                ]
                await self._ready(results, len(processes))
                cpu_before = _cpu_seconds(worker.process.pid)
                db_before, broker_before = _cpu_of(*DATABASE), _broker_cpu(broker)
                go.set()
                expected = len(devices) + workload.points
                done = await _wait_rows(target, expected, f"{impl} {workload.name} run {run}",
                                        600)
                cpu = _cpu_seconds(worker.process.pid) - cpu_before
                db_cpu = _cpu_of(*DATABASE) - db_before
                broker_cpu = _broker_cpu(broker) - broker_before
                stored = await target.rows()
                if stored != expected:
                    raise RuntimeError(f"{impl} {workload.name} run {run}: {stored} rows "
                                       f"stored, {expected} expected")
                first, last, publish_cpu = await self._published(results, len(processes))
                for process in processes:
                    process.join()
                seconds = done - first
                return Run(impl, workload.name, workload.points, seconds, last - first,
                           workload.points / seconds,
                           cpu / workload.points * 1e6, db_cpu / workload.points * 1e6,
                           broker_cpu / workload.points * 1e6,
                           publish_cpu / workload.points * 1e6,
                           _rss_mb(worker.process.pid, "VmHWM"))
            finally:
                worker.stop(timeout=30)

    async def latency(self, workload: Workload, rate_points: float, seconds: float,
                      soak: bool = False) -> dict[str, Any]:
        """Publish at ``rate_points`` points/s plus probes; probe latencies (and RSS)."""
        devices, only = fleet(f"lat-{workload.name}-", workload.devices + PROBES)
        devices, probes = devices[:workload.devices], devices[workload.devices:]
        name = f"bench-latency-{workload.name}"
        async with running_broker(name) as broker:
            await _create_topics(broker, [device_topic(d) for d in devices + probes],
                                 workload.partitions)
            worker, target = await self._worker(broker, "ours", name, devices + probes, only)
            try:
                await self._warm_up(broker, workload, target)
                go, results = self.ctx.Event(), self.ctx.Queue()
                rate = rate_points / workload.metrics  # readings per second
                readings = int(rate * seconds)
                load = _start(self.ctx, _publish_process, broker.settings(), workload, devices,
                              readings, rate, go, results)
                probe = _start(self.ctx, probe_process, broker.settings(), probes, seconds, go,
                               results)
                await self._ready(results, 2)
                go.set()
                latencies, rss = await self._poll_probes(probes, seconds, worker.process.pid)
                await self._published(results, 2)
                for process in (load, probe):
                    process.join()
            finally:
                worker.stop(timeout=30)
        latencies.sort()
        result: dict[str, Any] = {
            "rate_points_per_s": rate_points,
            "probes": len(latencies),
            "latency_p50_s": quantile(latencies, 0.5),
            "latency_p99_s": quantile(latencies, 0.99),
        }
        if soak:
            result.update(rss_mb_start=rss[0][1], rss_mb_end=rss[-1][1], rss_mb_samples=rss)
        return result

    async def _poll_probes(self, probes: list[str], seconds: float,
                           pid: int) -> tuple[list[float], list[tuple[float, float]]]:
        conn = await _db_connect()
        try:
            return await poll_probes(conn, probes, seconds, pid)
        finally:
            await conn.close()


async def poll_probes(conn: asyncpg.Connection, probes: list[str], seconds: float,
                      pid: int) -> tuple[list[float], list[tuple[float, float]]]:
    """Poll the probes' rows every 25 ms for ``seconds`` (+5): each probe reading's
    publish-to-row latency, and the RSS of process ``pid`` every 10 s (seconds, MB)."""
    latencies: list[float] = []
    rss: list[tuple[float, float]] = []
    seen: set[tuple[str, Any]] = set()
    start = time.time()
    next_rss = start
    with tqdm(total=seconds, desc="steady load", unit="s", leave=False) as bar:
        while time.time() < start + seconds + 5:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT device_id, time FROM readings WHERE device_id = ANY($1) "
                    "AND metric = 'probe' AND time > now() - interval '30 seconds'",
                    probes)
            now = time.time()
            for row in rows:
                key = (row["device_id"], row["time"])
                if key not in seen:
                    seen.add(key)
                    latencies.append(now - row["time"].timestamp())
            if now >= next_rss:
                rss.append((round(now - start, 1), round(_rss_mb(pid), 1)))
                next_rss = now + 10
            bar.update(min(now - start, seconds) - bar.n)
            await asyncio.sleep(0.025)
    return latencies, rss


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(int(q * len(values)), len(values) - 1)], 4)


def _median(runs: list[Run], impl: str, workload: str, field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs
                             if r.impl == impl and r.workload == workload)


async def _database_state() -> dict[str, int]:
    """The stack database's size and device count: what a worker's start-up may grow with."""
    conn = await _db_connect()
    try:
        return dict(await conn.fetchrow(
            "SELECT pg_database_size(current_database()) AS database_bytes, "
            "(SELECT count(*) FROM devices) AS devices"))
    finally:
        await conn.close()


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(WORKLOADS)
    ours = [summary[f"points_per_s_{n}"] for n in names]
    base = [summary[f"baseline_points_per_s_{n}"] for n in names]
    xs = range(len(names))
    left.bar([x - 0.2 for x in xs], ours, width=0.4, label="devicestream")
    left.bar([x + 0.2 for x in xs], base, width=0.4, label="baseline (take + COPY)")
    left.set_xticks(list(xs), names)
    left.set_ylabel("points/s, end to end (median)")
    left.legend()
    soak = summary.get("soak") or {}
    if soak.get("rss_mb_samples"):
        t, mb = zip(*soak["rss_mb_samples"])
        right.plot(t, mb)
        right.set_xlabel("seconds of soak at half load")
        right.set_ylabel("worker RSS, MB")
    right.set_title("worker memory")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _report(summary: dict[str, Any], runs: list[Run]) -> str:
    db = summary["database_at_start"]
    lines = ["# devicestream pipeline benchmark", "",
             f"{summary['machine']}, {summary['date']}; medians of {summary['runs']} runs.", "",
             f"The stack database at the start: {db['database_bytes'] / 1e6:,.0f} MB, "
             f"{db['devices']:,} devices.", "",
             "| workload | ours points/s | baseline points/s | ratio | p50 latency s | "
             "p99 latency s | CPU s / M points | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for name in (n for n in WORKLOADS if f"points_per_s_{n}" in summary):
        lines.append(
            f"| {name} | {summary[f'points_per_s_{name}']:,.0f} | "
            f"{summary[f'baseline_points_per_s_{name}']:,.0f} | {summary[f'ratio_{name}']:.2f} | "
            f"{summary.get(f'latency_p50_s_{name}')} | {summary.get(f'latency_p99_s_{name}')} | "
            f"{summary[f'cpu_s_per_million_points_{name}']:.1f} | "
            f"{summary[f'peak_rss_mb_{name}']:.0f} |")
    soak = summary.get("soak")
    if soak:
        lines += ["", f"Soak: {soak['seconds']:.0f} s at {soak['rate_points_per_s']:,.0f} "
                  f"points/s: RSS {soak['rss_mb_start']} MB at the start, "
                  f"{soak['rss_mb_end']} MB at the end; probe latency p50 "
                  f"{soak['latency_p50_s']} s, p99 {soak['latency_p99_s']} s."]
    lines += ["", "![throughput](throughput.png)", "", "## Runs", "",
              "CPU seconds per million points during the run: of the worker, of the database "
              "(every PostgreSQL and pgBouncer process), of the broker and of the publishers "
              "(all on the same cores); publish seconds: from the first to the last publish.", "",
              "| impl | workload | points | seconds | publish seconds | points/s | "
              "worker CPU s/M | "
              "database CPU s/M | broker CPU s/M | publishers CPU s/M | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.impl} | {r.workload} | {r.points} | {r.seconds:.1f} | "
              f"{r.publish_seconds:.1f} | "
              f"{r.points_per_s:,.0f} | {r.cpu_s_per_million:.1f} | "
              f"{r.db_cpu_s_per_million:.1f} | {r.broker_cpu_s_per_million:.1f} | "
              f"{r.publisher_cpu_s_per_million:.1f} | {r.peak_rss_mb:.0f} |"
              for r in runs]
    return "\n".join(lines) + "\n"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    runs: list[Run] = []
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {os.cpu_count()} cores", "runs": args.runs,
        "database_at_start": await _database_state()}
    for name in args.workloads:
        workload = WORKLOADS[name]
        if args.scale != 1:
            workload = Workload(**{**asdict(workload),
                                   "messages": max(int(workload.messages * args.scale), 10)})
        for run in range(1, args.runs + 1):
            for impl in ("ours", "baseline"):
                result = await bench.throughput(impl, workload, run)
                runs.append(result)
                print(f"{impl:8} {name:7} run {run}: {result.points_per_s:10,.0f} points/s "
                      f"({result.seconds:.1f} s, published in {result.publish_seconds:.1f} s; "
                      f"CPU s/M points: worker "
                      f"{result.cpu_s_per_million:.1f}, database "
                      f"{result.db_cpu_s_per_million:.1f}, broker "
                      f"{result.broker_cpu_s_per_million:.1f}, publishers "
                      f"{result.publisher_cpu_s_per_million:.1f})")
        ours = _median(runs, "ours", name, "points_per_s")
        base = _median(runs, "baseline", name, "points_per_s")
        summary.update({
            f"points_per_s_{name}": round(ours),
            f"baseline_points_per_s_{name}": round(base),
            f"ratio_{name}": round(ours / base, 3),
            f"cpu_s_per_million_points_{name}": round(_median(runs, "ours", name,
                                                              "cpu_s_per_million"), 2),
            f"peak_rss_mb_{name}": round(_median(runs, "ours", name, "peak_rss_mb"), 1),
            f"db_cpu_s_per_million_points_{name}": round(
                _median(runs, "ours", name, "db_cpu_s_per_million"), 2),
            f"baseline_db_cpu_s_per_million_points_{name}": round(
                _median(runs, "baseline", name, "db_cpu_s_per_million"), 2),
        })
        print(f"{name}: ours {ours:,.0f} points/s, baseline {base:,.0f}, ratio {ours / base:.2f}")
        latency = await bench.latency(workload, ours / 2, args.latency_seconds)
        summary[f"latency_p50_s_{name}"] = latency["latency_p50_s"]
        summary[f"latency_p99_s_{name}"] = latency["latency_p99_s"]
        print(f"{name}: latency at {ours / 2:,.0f} points/s: p50 {latency['latency_p50_s']} s, "
              f"p99 {latency['latency_p99_s']} s ({latency['probes']} probes)")
    if args.soak and "batched" in args.workloads:
        rate = args.soak_rate or summary["points_per_s_batched"] / 2
        soak = await bench.latency(WORKLOADS["batched"], rate, args.soak, soak=True)
        summary["soak"] = {"seconds": args.soak, **soak}
        print(f"soak: RSS {soak['rss_mb_start']} MB -> {soak['rss_mb_end']} MB")
    summary["run_details"] = [asdict(r) for r in runs]
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out / "report.md").write_text(_report(summary, runs))
    if all(f"points_per_s_{n}" in summary for n in WORKLOADS):
        _plot(summary, out / "throughput.png")
    print(f"wrote {out / 'latest.json'} and {out / 'report.md'}")
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workload (median)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--scale", type=float, default=1.0, help="scale the message counts")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--soak", type=float, default=600.0,
                        help="seconds of soak at half load (0 = none)")
    parser.add_argument("--soak-rate", type=float, default=0.0,
                        help="points/s of the soak (default: half the batched median), to "
                             "compare soaks across runs at the same load")
    parser.add_argument("--output-dir", type=Path, default=RESULTS,
                        help="where latest.json, report.md and throughput.png go")
    return parser.parse_args()


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C: workers stopped, private brokers killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    asyncio.run(main(parse_args()))

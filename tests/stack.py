"""Shared test helpers: mostly for integration tests against the real local stack
(``make stack-up``), also the fakes more than one unit test module needs."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from bench.private_broker import BrokerProxy, PrivateBroker, free_port  # noqa: F401 (the tests import them from here)
from bench.private_pgbouncer import PrivatePgBouncer
from bench.private_postgres import Server, private_database, server_folder
from bench.queries import PG_PORT  # the stack's PostgreSQL itself; SETTINGS go through pgBouncer
from bench.worker_process import WorkerProcess, fleet, unique  # noqa: F401 (likewise)
from sinks.postgres import connect_kwargs, lift_decompression_limit
from streams.settings import Settings, TopicMode
from streams.topics import DEAD_LETTER_TOPIC, TopicProvisioner
from web.kafka_offsets import BrokerOffsets
from web.periodic import PeriodicSample

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output"
SETTINGS = Settings.from_env({})


def require_stack() -> None:
    """Fail (not skip) with a clear message when the local stack is down."""
    for name, port in (("broker", 9092), ("pgBouncer", 6432), ("PostgreSQL", PG_PORT)):
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                raise RuntimeError(f"{name} is not listening on 127.0.0.1:{port}: run `make stack-up`")


REPLICA_PORT = 55433  # make stack-up REPLICA=1


def _stack_state_dir() -> Path:
    stack = REPO / ".stack"
    return (stack / "pgstate").resolve() if (stack / "pgstate").exists() else stack


def replica_sql(sql: str) -> str:
    """Run ``sql`` on the stack's streaming replica as the postgres superuser."""
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-qtA", "-h",
         str(_stack_state_dir() / "replica" / "socket"), "-p", str(REPLICA_PORT),
         "-d", "postgres", "-c", sql], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def replica_pg_ctl(*args: str) -> None:
    """pg_ctl on the stack's streaming replica (start, stop -m fast...)."""
    data = _stack_state_dir() / "replica" / "pgdata"
    major = (data / "PG_VERSION").read_text().strip()
    subprocess.run(["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{major}/bin/pg_ctl",
                    "-D", str(data), "-l", str(data.parent / "postgresql.log"), "-w", *args],
                   capture_output=True, timeout=120, check=True)


@contextlib.contextmanager
def stack_replica() -> Iterator[None]:
    """The stack's replica, started by ``make stack-up REPLICA=1`` and stopped afterwards
    (``make test`` starts the stack without it), also when it failed to become ready: a
    replica left replaying behind a busy primary writes as much as the primary does."""
    try:
        done = subprocess.run(["make", "-s", "stack-up", "REPLICA=1"], cwd=REPO,
                              capture_output=True, text=True, timeout=600, env={**os.environ})
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"127.0.0.1:{REPLICA_PORT}  streaming replica" in done.stdout
        yield
    finally:
        if (_stack_state_dir() / "replica" / "pgdata" / "postmaster.pid").exists():
            replica_pg_ctl("stop", "-m", "fast")


@contextlib.contextmanager
def exclusive(resource: str) -> Iterator[None]:
    """Hold ``resource`` (a name) against the other test processes of this checkout, as
    ``make test`` runs the integration tests side by side (pytest-xdist): the tests that
    use the replica, the pgBackRest repository or storage maintenance take turns."""
    OUTPUT.mkdir(exist_ok=True)
    with open(OUTPUT / f"{resource}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class PrivateDatabase:
    """A database path of a test's own: a PostgreSQL server with TimescaleDB, the schema
    migrated and the stack's roles and passwords, behind a pgBouncer, each on a port of
    127.0.0.1 and stoppable by the test (``postgres.stop()``, ``pgbouncer.stop(signal)``)
    and startable again; ``settings`` and ``worker_env()`` go through the pgBouncer."""

    postgres: Server
    pgbouncer: PrivatePgBouncer

    @property
    def settings(self) -> Settings:
        return self.pgbouncer.settings

    def worker_env(self) -> dict[str, str]:
        return self.pgbouncer.worker_env()


@contextlib.asynccontextmanager
async def running_database() -> AsyncIterator[PrivateDatabase]:
    """A started ``PrivateDatabase`` (PostgreSQL's default settings: a test writes little,
    and several such servers may run at once); when the block ends, its pgBouncer and
    server are stopped by pid and their folder in /var/tmp removed."""
    with server_folder("devicestream-test-db-") as (root, servers):
        settings = await private_database("postgres", root, servers, {}, SETTINGS.db.name)
        (postgres,) = servers
        pgbouncer = PrivatePgBouncer(postgres, settings)
        try:
            yield PrivateDatabase(postgres, await pgbouncer.start())
        finally:
            pgbouncer.stop()


async def db_connect(settings: Settings = SETTINGS) -> asyncpg.Connection:
    """A connection to the stack's database, or to the one ``settings`` names (a restore's)."""
    return await asyncpg.connect(**connect_kwargs(settings))


async def compress_chunks_holding(moment: datetime, settings: Settings = SETTINGS) -> int:
    """Compress every chunk of the storage hypertables whose range holds ``moment``
    (Timescale license); how many chunks that was."""
    conn = await db_connect(settings.as_owner())
    try:
        attempts = 10
        while True:
            try:
                return len(await conn.fetch(
                    "SELECT compress_chunk(format('%I.%I', chunk_schema, chunk_name)::regclass, "
                    "if_not_compressed => true) FROM timescaledb_information.chunks "
                    "WHERE hypertable_schema = 'storage' AND range_start <= $1 "
                    "AND range_end > $1", moment))
            except asyncpg.SerializationError:
                # Recompressing a chunk another test is writing into: TimescaleDB gives up
                # ("retrying with next policy run"); so do we, a moment later.
                attempts -= 1
                if not attempts:
                    raise
                await asyncio.sleep(1)
    finally:
        await conn.close()


_RETENTION_JOBS = """
SELECT j.job_id, s.job_status FROM timescaledb_information.jobs j
JOIN timescaledb_information.job_stats s USING (job_id)
WHERE j.proc_name = 'policy_retention' AND j.hypertable_schema = 'storage'
"""


async def hold_retention_jobs(timeout: float = 60) -> None:
    """Timescale license: unschedule the retention policy jobs of the storage hypertables and
    wait for any run in progress. A job an earlier maintenance run left (horizon 90 days)
    starts on its own and would drop the old chunks a test has just written before the
    test's own maintenance run raises the horizon. The next maintenance run that changes a
    horizon installs its policy anew, scheduled. No-op without such jobs (Apache build)."""
    conn = await db_connect(SETTINGS.as_owner())
    try:
        if await conn.fetchval("SELECT current_setting('timescaledb.license', true)") != \
                "timescale":
            return  # no policy job runs under the Apache license
        for row in await conn.fetch(_RETENTION_JOBS):
            await conn.execute("SELECT alter_job($1, scheduled => false)", row["job_id"])
        deadline = time.monotonic() + timeout
        while any(r["job_status"] == "Running" for r in await conn.fetch(_RETENTION_JOBS)):
            assert time.monotonic() < deadline, "a retention policy job is still running"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def forget_devices(devices: list[str]) -> None:
    """Remove test devices and their raw rows, so that their retention overrides stop
    counting for the maintenance horizon (as the owner: the workers' role deletes no device)."""
    conn = await db_connect(SETTINGS.as_owner())
    try:
        async with conn.transaction():
            await lift_decompression_limit(conn)  # their rows may be in compressed chunks
            await conn.execute(
                "DELETE FROM storage.readings WHERE series_id IN "
                "(SELECT series_id FROM storage.series WHERE device_id = ANY($1))", devices)
            await conn.execute("DELETE FROM devices WHERE device_id = ANY($1)", devices)
    finally:
        await conn.close()


async def create_topics(names: list[str], partitions: int | None = None) -> None:
    async with TopicProvisioner(SETTINGS) as topics:
        await topics.ensure(names, partitions=partitions)


async def delete_topics(names: list[str]) -> None:
    """Delete topics (the local broker keeps every topic, and each worker lists them all)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=SETTINGS.kafka.brokers)
    await admin.start()
    try:
        for start in range(0, len(names), 500):
            await admin.delete_topics(names[start:start + 500], timeout_ms=60_000)
    finally:
        await admin.close()


class RawProducer:
    """Publishes exact bytes (including bad ones) to exact topics; for tests only."""

    def __init__(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=SETTINGS.kafka.brokers,
                                          max_request_size=16 * 1024 * 1024)

    async def __aenter__(self) -> "RawProducer":
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: bytes | None, value: Any) -> tuple[int, int]:
        """Send and wait; return (partition, offset)."""
        if not isinstance(value, bytes):
            value = orjson.dumps(value)
        meta = await self._producer.send_and_wait(topic, value=value, key=key)
        return meta.partition, meta.offset


def run_replay(since: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``faust -A streams.app replay --since SINCE ARGS...`` with ``env`` added (APP_ID...)."""
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams.app", "replay", "--since", since, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "WEB_PORT": str(free_port()), **env})


async def committed_offsets(address: str, group: str,
                            tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The offsets ``group`` committed on ``tps`` (None where it committed none)."""
    offsets = BrokerOffsets([address])
    try:
        return await offsets.committed(group, tps)
    finally:
        await offsets.close()


async def commit_offsets(address: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` as a stopped worker leaves them (no member stays)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=address, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def read_dead_letters(topics: set[str], expect: int, *, keys: set[bytes] | None = None,
                            timeout: float = 60.0) -> list[dict[str, Any]]:
    """The dead letters on the DLQ whose source topic is one of ``topics`` (and whose key
    is one of ``keys``, when given).

    Reads until ``expect`` of them are in, then on to the DLQ's end as it is then, so that
    a letter published twice shows up twice; gives up after ``timeout`` seconds with what
    it found (the caller's count assertion then fails).
    """
    consumer = AIOKafkaConsumer(DEAD_LETTER_TOPIC, bootstrap_servers=SETTINGS.kafka.brokers,
                                auto_offset_reset="earliest", group_id=None,
                                fetch_max_bytes=8 * 1024 * 1024)
    offsets = BrokerOffsets(SETTINGS.kafka.brokers)
    await consumer.start()
    found: list[dict[str, Any]] = []
    ends: dict[TopicPartition, int] | None = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    record = orjson.loads(message.value)
                    if record.get("topic") in topics and (keys is None or message.key in keys):
                        record["_key"] = message.key
                        found.append(record)
            if ends is None and len(found) >= expect:
                ends = await offsets.ends_of(DEAD_LETTER_TOPIC)
            if ends is not None and await _reached(consumer, ends):
                break
    finally:
        await consumer.stop()
        await offsets.close()
    return found


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.5 s until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def output_name(name: str) -> str:
    """``name`` for a file in test-output/, with the pytest-xdist process's id when tests
    run side by side (each process's file of its own)."""
    process = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{name}-{process}" if process else name


class Worker(WorkerProcess):
    """``bench.worker_process.WorkerProcess`` as the tests run it: its log in test-output/
    (``output_name``), a consumer group of its own, new device topics found within a
    second, and no maintenance timer unless the test sets ``MAINTENANCE_INTERVAL`` (it
    would run beside the maintenance tests)."""

    def __init__(self, name: str, app: str = "streams.app", **env: str) -> None:
        super().__init__(output_name(name), app, OUTPUT, **{
            "APP_ID": unique("devicestream-test-"), "TOPIC_DISCOVERY_INTERVAL": "1",
            "DATA_DIR": str(OUTPUT / "faust-data"), "MAINTENANCE_INTERVAL": "0", **env})


# The helpers below read storage.* by series id, never the ``readings`` view by device:
# on a hypertable with compressed chunks (Timescale license) the planner cannot push a
# join's series ids into the chunk scans, and a device filter without a time range scans
# every raw chunk (seconds on a large test database); ``series_id = ANY(ids)`` uses each
# chunk's (series_id, time) index, or the compressed chunks' segment-by index.
_SERIES = "SELECT series_id, device_id, metric FROM storage.series WHERE device_id = ANY($1)"

_AGGREGATE_MISMATCHES = """
WITH expected AS (
    SELECT time_bucket($2::text::interval, time) AS bucket, series_id, count(*) AS count,
           sum(value) AS sum, min(value) AS min, max(value) AS max
    FROM storage.readings WHERE series_id = ANY($1::int[]) GROUP BY 1, 2
), actual AS (
    SELECT bucket, series_id, count, sum, min, max
    FROM storage.{table} WHERE series_id = ANY($1::int[])
)
SELECT e.series_id, e.bucket, e.count, e.sum, e.min, e.max,
       a.series_id AS a_series_id, a.bucket AS a_bucket,
       a.count AS a_count, a.sum AS a_sum, a.min AS a_min, a.max AS a_max
FROM expected e
FULL JOIN actual a ON (a.bucket, a.series_id) = (e.bucket, e.series_id)
WHERE e.bucket IS NULL OR a.bucket IS NULL OR e.count <> a.count OR e.min <> a.min
   OR e.max <> a.max OR abs(e.sum - a.sum) > 1e-9 * greatest(1, abs(e.sum))
"""


async def _series_of(conn: asyncpg.Connection, devices: list[str]) -> dict[int, tuple[str, str]]:
    """series id -> (device, metric) of ``devices``."""
    return {r["series_id"]: (r["device_id"], r["metric"])
            for r in await conn.fetch(_SERIES, devices)}


async def aggregate_mismatches(devices: list[str],
                               settings: Settings = SETTINGS) -> list[dict[str, Any]]:
    """Rows of readings_1m / readings_1h that differ from SQL over the raw rows (sum to 1e-9)."""
    conn = await db_connect(settings)
    try:
        series = await _series_of(conn, devices)
        found = []
        for table, width in (("readings_1m", "1 minute"), ("readings_1h", "1 hour")):
            rows = await conn.fetch(_AGGREGATE_MISMATCHES.format(table=table), list(series),
                                    width)
            found += [{"table": table, "series": series.get(r["series_id"] or r["a_series_id"]),
                       **dict(r)} for r in rows]
        return found
    finally:
        await conn.close()


async def publish_readings(devices: list[str], per_device: int, metrics: int = 2,
                           step_ms: int = 250, start_ms: int | None = None) -> int:
    """Publish ``per_device`` readings per device through DeviceProducer; return the points.

    Times start at ``start_ms`` (default two hours ago) and step by ``step_ms``, interleaved
    across devices, so the readings span many 1-minute buckets and at least two 1-hour buckets.
    """
    from producers.device_producer import DeviceProducer, ProducerConfig

    if start_ms is None:
        start_ms = int(time.time() * 1000) - 2 * 3600 * 1000
    async with DeviceProducer(SETTINGS, ProducerConfig(max_batch_readings=50)) as producer:
        for i in range(per_device):
            await producer.send_many(
                {"device_id": d, "time": start_ms + i * step_ms,
                 "metrics": {f"m{j}": (i * 31 + j * 7 + n) % 1000 / 10 for j in range(metrics)}}
                for n, d in enumerate(devices)
            )
    return len(devices) * per_device * metrics


async def count_rows(devices: list[str], settings: Settings = SETTINGS) -> int:
    conn = await db_connect(settings)
    try:
        series = await _series_of(conn, devices)
        return await conn.fetchval(
            "SELECT count(*) FROM storage.readings WHERE series_id = ANY($1::int[])", list(series))
    finally:
        await conn.close()


async def rows_at_least(devices: list[str], expected: int,
                        settings: Settings = SETTINGS) -> bool:
    """Whether ``readings`` holds at least ``expected`` rows of ``devices`` (for ``wait_for``)."""
    return await count_rows(devices, settings) >= expected


async def duplicate_rows(devices: list[str], settings: Settings = SETTINGS) -> int:
    """Keys stored more than once (must always be 0: the unique index forbids it)."""
    conn = await db_connect(settings)
    try:
        series = await _series_of(conn, devices)
        return await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM storage.readings WHERE series_id = ANY($1::int[]) "
            "GROUP BY series_id, time HAVING count(*) > 1) d", list(series))
    finally:
        await conn.close()


async def stored_points(devices: list[str],
                        settings: Settings = SETTINGS) -> Counter[tuple[str, str, int, float]]:
    """The stored points of ``devices`` as a multiset of (device, metric, epoch ms, value)."""
    conn = await db_connect(settings)
    try:
        series = await _series_of(conn, devices)
        rows = await conn.fetch(
            "SELECT series_id, (extract(epoch FROM time) * 1000)::bigint AS ms, value "
            "FROM storage.readings WHERE series_id = ANY($1::int[])", list(series))
    finally:
        await conn.close()
    return Counter((*series[r["series_id"]], r["ms"], r["value"]) for r in rows)


# How far back, in readings of the same device, the conflicting duplicates reach: the same
# producer message, a later batch, seconds later (past commits, kills and outages).
CONFLICT_DISTANCES = (1, 40, 400)


class Stream:
    """Publishes readings at a steady rate, with one bad message every ``bad_every`` readings
    and, every ``conflict_every`` readings, a later reading repeating an earlier one's device
    and time with other values; remembers what the pipeline must end up with (the first
    values)."""

    def __init__(self, devices: list[str], readings_per_s: float, seconds: float,
                 metrics: int = 2, bad_every: int = 200, conflict_every: int = 50,
                 topic_mode: TopicMode = TopicMode.PER_DEVICE) -> None:
        self.devices = devices
        self.topic_mode = topic_mode
        self.rate = readings_per_s
        self.seconds = seconds
        self.metrics = metrics
        self.bad_every = bad_every
        self.conflict_every = conflict_every
        self.points = 0
        self.conflicts = 0  # conflicting duplicates sent
        self.first: dict[tuple[str, str, int], float] = {}  # (device, metric, ms): first value
        # (topic, partition, offset) of the bad messages: the partition too, since on the
        # shared topic two partitions hold the same offsets
        self.dead: set[tuple[str, int, int]] = set()

    async def run(self) -> None:
        from producers.device_producer import DeviceProducer, ProducerConfig
        from streams.topics import topic_for

        start_ms = int(time.time() * 1000) - 3600 * 1000
        total = int(self.rate * self.seconds)
        began = time.monotonic()
        settings = replace(SETTINGS, topics=replace(SETTINGS.topics, mode=self.topic_mode))
        async with DeviceProducer(settings, ProducerConfig(max_batch_readings=20)) as good, \
                RawProducer() as bad:
            for i in range(total):
                device = self.devices[i % len(self.devices)]
                if i % self.bad_every == self.bad_every - 1:
                    topic = topic_for(device, self.topic_mode)
                    partition, offset = await bad.send(
                        topic, device.encode(),
                        b'{"device_id": "' + device.encode() + b'", "time": "yesterday"}')
                    self.dead.add((topic, partition, offset))
                else:
                    metrics = {f"m{j}": float(i % 977 + j) for j in range(self.metrics)}
                    await good.send_many([{"device_id": device, "time": start_ms + i,
                                           "metrics": metrics}])
                    self.first.update(((device, m, start_ms + i), v) for m, v in metrics.items())
                    self.points += self.metrics
                if self.conflict_every and i % self.conflict_every == 0:
                    await self._conflict(good, device, start_ms, i)
                delay = began + (i + 1) / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def _conflict(self, producer: Any, device: str, start_ms: int, i: int) -> None:
        """Send an earlier reading of ``device`` again with other values (if it was valid)."""
        distance = CONFLICT_DISTANCES[(i // self.conflict_every) % len(CONFLICT_DISTANCES)]
        moment = start_ms + i - distance * len(self.devices)
        if (device, "m0", moment) not in self.first:
            return
        await producer.send_many([{
            "device_id": device, "time": moment,
            "metrics": {f"m{j}": -1.0 - self.first[device, f"m{j}", moment]
                        for j in range(self.metrics)},
        }])
        self.conflicts += 1


async def assert_exactly_once(stream: Stream, timeout: float = 120,
                              settings: Settings = SETTINGS) -> None:
    """Raw rows (each with the first value sent), aggregates and dead letters of ``stream``
    are exactly what it sent (the rows in the stack's database, or the one ``settings``
    names)."""
    devices = stream.devices
    await wait_for(lambda: rows_at_least(devices, stream.points, settings), timeout,
                   f"{stream.points} rows")
    await asyncio.sleep(2)  # anything extra would show up now
    assert await count_rows(devices, settings) == stream.points
    assert await duplicate_rows(devices, settings) == 0
    stored = await stored_points(devices, settings)
    expected = Counter((d, m, ms, v) for (d, m, ms), v in stream.first.items())
    missing, extra = expected - stored, stored - expected
    assert not missing and not extra, (
        f"{sum(missing.values())} points sent first are not stored as sent, e.g. "
        f"{sorted(missing)[:3]}; stored instead: {sorted(extra)[:3]}")
    assert await aggregate_mismatches(devices, settings) == []
    from streams.topics import topic_for

    # device-data holds every shared-mode run's devices: only this stream's keys
    letters = await read_dead_letters({topic_for(d, stream.topic_mode) for d in devices},
                                      len(stream.dead), keys={d.encode() for d in devices})
    found = Counter((r["topic"], r["partition"], r["offset"]) for r in letters)
    missing, extra = Counter(stream.dead) - found, found - Counter(stream.dead)
    assert not missing and not extra, (
        f"one dead letter per bad message, none published twice: {sum(missing.values())} "
        f"missing, e.g. {sorted(missing)[:3]}; {sum(extra.values())} extra, e.g. "
        f"{sorted(extra)[:3]}")


def fake_sample(value: Any = None, *, age: float | None = None,
                error: str | None = None) -> PeriodicSample[Any]:
    """A PeriodicSample that fails the test if anything makes it measure: ``value`` measured
    ``age`` seconds ago (never measured while ``age`` is None), ``error`` its last failure."""
    async def measure() -> Any:
        raise AssertionError("a fake sample must not measure")

    sample: PeriodicSample[Any] = PeriodicSample("fake", measure, interval=60)
    if age is not None:
        sample.value, sample.measured_at = value, time.time() - age
    sample.error = error
    return sample

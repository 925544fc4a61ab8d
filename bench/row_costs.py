"""What the rows a data point makes cost the database, at 1,000 and 1,000,000 devices, by
storage layout: ``python -m bench.row_costs``.

Issue #17 asks for points/s at 1,000,000 known devices of at least 80% of the rate at
1,000 (``bench.fleet`` measures the pipeline). At 1,000 devices a 50k-point batch folds into
a few thousand aggregate rows and devices; at a million, sparse series make each point a
raw row, a 1-minute row, a 1-hour row and a share of a devices row. This benchmark times
those rows, without Kafka or the worker, for each way of writing them, so that a storage
layout can be judged before it is built.

For each size of ``--sizes``, a fleet of devices of ``--metrics`` metrics is seeded in bulk
(one reading each, a minute before the measured ones, in the same hour: its series, raw,
1-minute, 1-hour and devices rows). Then ``--points`` points of the known devices, round
robin, each device reading once every size / ``--event-rate`` seconds of event time (as
``bench.fleet``), are written in batches of ``SINK_BATCH_POINTS`` (one transaction each, one
writer) into a new database for each layout:

- ``sink``: ``sinks.timescale.TimescaleSink``, the worker's write path (raw rows COPied;
  aggregates folded per batch, COPied into new buckets and upserted into stored ones;
  devices upserted). Its series resolution is left out: its cache starts empty here, where
  a worker's holds the known devices (``bench.fleet`` reports it);
- ``raw``: the raw rows alone (binary COPY): the floor of every layout;
- ``raw_devices``: the raw rows and the devices upsert;
- ``partials``: ``raw_devices``, and each batch's 1-minute and 1-hour rows COPied as
  insert-only partials (the aggregate tables' unique indexes made plain; reads would sum
  the partials of a bucket, and a background job would compact them: neither is counted);
- ``minute_rows``: ``partials`` without the 1-hour rows, left to a job that would fold
  each closed hour's 1-minute rows (a series' readings of an hour into one row), not
  counted;
- ``rollup``: ``raw_devices``, then the aggregates computed in bulk from the stored rows as
  a background job would: the 1-minute rows by one sorted ``INSERT ... SELECT`` from the raw
  rows, the 1-hour rows folded from those into the stored ones. Its seconds are
  ``raw_devices``' plus the two statements'.

Each size and layout has a private server of its own (``bench.private_postgres``, the
stack's settings), removed once measured. Writes ``bench/results/row_costs.json``: per size
and layout the seconds, points/s and microseconds per point; per layout, the largest size's
points/s over the smallest's. Needs root (the servers run as ``postgres``).
"""
from __future__ import annotations

import argparse
import functools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import asyncpg
import numpy as np

from bench.fleet import device_ids
from bench.private_postgres import PG_USER, Server, as_postgres, pg_bindir, private_database, \
    run_with_servers, stack_tuning
from bench.queries import RESULTS, command, connect, machine, psql_super, save_results
from sinks.batch_fold import Folded, first_of_each_key, fold
from sinks.copy_binary import FLOAT8, INT4, INT8, copy_rows, timestamptz
from sinks.postgres import create_pool
from sinks.timescale import ADD_TO_BUCKET, HOUR_US, MINUTE_US, TimescaleSink, \
    copy_aggregates, upsert_devices
from streams.settings import Settings, SinkSettings

LAYOUTS = ("sink", "raw", "raw_devices", "partials", "minute_rows", "rollup")
SECOND_US = 1_000_000

_SEED_SERIES = """
INSERT INTO storage.series (device_id, metric)
SELECT d.id, 'm' || j FROM unnest($1::text[]) WITH ORDINALITY AS d(id, k),
       generate_series(0, $2 - 1) AS j
ORDER BY d.k, j
"""

_SEED_READINGS = """
INSERT INTO storage.readings (time, series_id, value)
SELECT timestamptz 'epoch' + $1::bigint * interval '1 microsecond', series_id, 0
FROM storage.series ORDER BY series_id
"""

_SEED_AGGREGATES = """
INSERT INTO storage.readings_1m (bucket, series_id, count, sum, min, max)
SELECT time_bucket('1 minute', time), series_id, 1, value, value, value
FROM storage.readings ORDER BY series_id;
INSERT INTO storage.readings_1h (bucket, series_id, count, sum, min, max)
SELECT time_bucket('1 hour', time), series_id, 1, value, value, value
FROM storage.readings ORDER BY series_id;
"""

_SEED_DEVICES = """
INSERT INTO devices (device_id, first_seen, last_seen)
SELECT id, timestamptz 'epoch' + $2::bigint * interval '1 microsecond',
       timestamptz 'epoch' + $2::bigint * interval '1 microsecond'
FROM unnest($1::text[]) AS id
"""

# Series ids follow the seed's order (device, then metric): checked, as the batches'
# series ids are computed from it.
_SERIES_IN_ORDER = """
SELECT count(*) = $2::bigint * array_length($1::text[], 1)
       AND bool_and(s.series_id = first.id + (d.k - 1) * $2 + substr(s.metric, 2)::int)
FROM storage.series s JOIN unnest($1::text[]) WITH ORDINALITY AS d(id, k) ON s.device_id = d.id,
     (SELECT min(series_id) AS id FROM storage.series) AS first
"""

_PLAIN_INDEXES = """
DROP INDEX storage.readings_1m_series_bucket;
CREATE INDEX readings_1m_series_bucket ON storage.readings_1m (series_id, bucket);
DROP INDEX storage.readings_1h_series_bucket;
CREATE INDEX readings_1h_series_bucket ON storage.readings_1h (series_id, bucket);
"""

_ROLLUP = [
    f"""INSERT INTO storage.readings_1m AS a (bucket, series_id, count, sum, min, max)
        SELECT time_bucket('1 minute', time), series_id, count(*), sum(value), min(value),
               max(value)
        FROM storage.readings WHERE time >= timestamptz 'epoch' + $1 * interval '1 microsecond'
        GROUP BY 2, 1 ORDER BY 2, 1
        {ADD_TO_BUCKET}""",
    f"""INSERT INTO storage.readings_1h AS a (bucket, series_id, count, sum, min, max)
        SELECT time_bucket('1 hour', bucket), series_id, sum(count), sum(sum), min(min),
               max(max)
        FROM storage.readings_1m
        WHERE bucket >= timestamptz 'epoch' + $1 * interval '1 microsecond'
        GROUP BY 2, 1 ORDER BY 2, 1
        {ADD_TO_BUCKET}""",
]


@dataclass(frozen=True, slots=True)
class Batch:
    """One transaction's points as columns, and its devices' first and last times."""

    time_us: np.ndarray  # int64
    device: np.ndarray  # int64, the device's index in the fleet
    metric: np.ndarray  # int64
    series_id: np.ndarray  # int64
    value: np.ndarray  # float64
    devices: list[list]  # (device ids, first times, last times)


class Fleet:
    """The devices of one size and their readings (``bench.fleet``'s timing)."""

    def __init__(self, size: int, metrics: int, event_rate: float, start_us: int) -> None:
        self.size, self.metrics = size, metrics
        self.ids = device_ids(f"rows{size}-", size)
        self.period_us = max(1, round(size / event_rate * SECOND_US))
        self.start_us = start_us  # the first measured round's time
        self.seed_us = start_us - 60 * SECOND_US

    def batches(self, points: int, batch_points: int, first_series: int) -> Iterator[Batch]:
        """The measured points, ``batch_points`` (whole readings) at a time."""
        per_batch = max(1, batch_points // self.metrics)
        readings = -(-points // self.metrics)
        ids = np.array(self.ids, dtype=object)
        for first in range(0, readings, per_batch):
            reading = np.arange(first, min(first + per_batch, readings))
            device = np.repeat(reading % self.size, self.metrics)
            time_us = np.repeat(self.start_us + reading // self.size * self.period_us,
                                self.metrics)
            metric = np.tile(np.arange(self.metrics), len(reading))
            index = np.repeat(reading, self.metrics)
            value = ((index * 7 + metric) % 1000).astype(np.float64)
            order = np.argsort(device, kind="stable")
            starts = np.flatnonzero(np.diff(device[order], prepend=-1))
            spans = [ids[device[order][starts]].tolist(),
                     np.minimum.reduceat(time_us[order], starts).tolist(),
                     np.maximum.reduceat(time_us[order], starts).tolist()]
            yield Batch(time_us, device, metric, first_series + device * self.metrics + metric,
                        value, spans)

    def points_of(self, batch: Batch) -> list[tuple[int, str, str, float]]:
        """The batch as the sink takes it: (time_us, device_id, metric, value)."""
        return [(t, self.ids[d], f"m{m}", v) for t, d, m, v in zip(
            batch.time_us.tolist(), batch.device.tolist(), batch.metric.tolist(),
            batch.value.tolist())]


async def copy_raw(conn: asyncpg.Connection, batch: Batch) -> None:
    """The batch's raw rows, by binary COPY (its keys are all new)."""
    await conn.copy_to_table(
        "readings", schema_name="storage", columns=["time", "series_id", "value"],
        format="binary", source=copy_rows(timestamptz(batch.time_us),
                                          batch.series_id.astype(INT4),
                                          batch.value.astype(FLOAT8)))


def _minute_rows(batch: Batch) -> Folded:
    """The batch's 1-minute rows, folded as the sink folds them."""
    rows = first_of_each_key(batch.series_id, batch.time_us, np.arange(len(batch.time_us)))
    series, time_us = batch.series_id[rows], batch.time_us[rows]
    return fold(series, time_us - time_us % MINUTE_US, batch.value[rows])


async def copy_minutes(conn: asyncpg.Connection, batch: Batch) -> None:
    """The batch's 1-minute rows, COPied as partials."""
    await copy_aggregates(conn, "readings_1m", _minute_rows(batch), INT4)


async def copy_partials(conn: asyncpg.Connection, batch: Batch) -> None:
    """The batch's 1-minute and 1-hour rows, COPied as partials (no key is unique)."""
    minute = _minute_rows(batch)
    await copy_aggregates(conn, "readings_1m", minute, INT4)
    await copy_aggregates(conn, "readings_1h", minute.refold(minute.bucket
                                                             - minute.bucket % HOUR_US), INT8)


class Run:
    """One fleet size and layout, on a private server of its own."""

    def __init__(self, args: argparse.Namespace, root: Path, servers: list[Server],
                 fleet: Fleet, layout: str) -> None:
        self.args, self.root, self.servers = args, root, servers
        self.fleet, self.layout = fleet, layout

    async def measure(self) -> dict[str, Any]:
        """Seed, write the measured points, and stop and remove the server."""
        name = f"{self.fleet.size}-{self.layout}"
        folder = self.root / name
        folder.mkdir()
        shutil.chown(folder, PG_USER, PG_USER)
        settings = await private_database(name, folder, self.servers, stack_tuning())
        server = self.servers[-1]
        conn = await connect(settings)
        try:
            first_series = await self._seed(conn, server)
            batches = self.fleet.batches(self.args.points, self.args.batch_points, first_series)
            if self.layout == "sink":
                seconds = await self._sink(settings, batches)
            else:
                write = _WRITES["raw_devices" if self.layout == "rollup" else self.layout]
                seconds = await _timed(conn, batches, write)
                if self.layout == "rollup":
                    for sql in _ROLLUP:
                        started = time.perf_counter()
                        await conn.execute(sql, self.fleet.start_us)
                        seconds += time.perf_counter() - started
            points = await conn.fetchval("SELECT count(*) FROM storage.readings") - len(
                self.fleet.ids) * self.fleet.metrics
        finally:
            await conn.close()
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
        return {"seconds": round(seconds, 2), "points": points,
                "points_per_s": round(points / seconds),
                "us_per_point": round(seconds / points * SECOND_US, 2)}

    async def _seed(self, conn: asyncpg.Connection, server: Server) -> int:
        """One reading of every device, with its rows of every table, written in bulk;
        returns the first series id."""
        ids, seed_us = self.fleet.ids, self.fleet.seed_us
        async with conn.transaction():
            await conn.execute(_SEED_SERIES, ids, self.fleet.metrics)
            if not await conn.fetchval(_SERIES_IN_ORDER, ids, self.fleet.metrics):
                raise RuntimeError("series ids do not follow the seed's order")
            await conn.execute(_SEED_READINGS, seed_us)
            await conn.execute(_SEED_AGGREGATES)
            await conn.execute(_SEED_DEVICES, ids, seed_us)
            if self.layout in ("partials", "minute_rows"):
                await conn.execute(_PLAIN_INDEXES)
        for table in ("storage.series", "storage.readings", "storage.readings_1m",
                      "storage.readings_1h", "devices"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        psql_super("CHECKPOINT", socket_dir=str(server.socket_dir), port=server.port)
        return await conn.fetchval("SELECT min(series_id) FROM storage.series")

    async def _sink(self, settings: Settings, batches: Iterator[Batch]) -> float:
        """The sink's COPY and merge seconds over the batches (its resolution left out)."""
        pool = await create_pool(settings, max_size=1)
        try:
            sink, seconds = TimescaleSink(pool), 0.0
            for batch in batches:
                result = await sink.write(self.fleet.points_of(batch))
                if result.inserted != len(batch.time_us):
                    raise RuntimeError(f"the sink stored {result.inserted} of "
                                       f"{len(batch.time_us)} new points")
                seconds += result.copy_seconds + result.merge_seconds
            return seconds
        finally:
            await pool.close()


async def _timed(conn: asyncpg.Connection, batches: Iterator[Batch],
                 write: Callable[[asyncpg.Connection, Batch], Awaitable[None]]) -> float:
    seconds = 0.0
    for batch in batches:
        started = time.perf_counter()
        async with conn.transaction():
            await write(conn, batch)
        seconds += time.perf_counter() - started
    return seconds


async def _raw_devices(conn: asyncpg.Connection, batch: Batch) -> None:
    await copy_raw(conn, batch)
    await conn.execute(_DEVICES, *batch.devices)


async def _minute_rows_layout(conn: asyncpg.Connection, batch: Batch) -> None:
    await _raw_devices(conn, batch)
    await copy_minutes(conn, batch)


async def _partials(conn: asyncpg.Connection, batch: Batch) -> None:
    await _raw_devices(conn, batch)
    await copy_partials(conn, batch)


_DEVICES = upsert_devices(1)
_WRITES = {"raw": copy_raw, "raw_devices": _raw_devices, "minute_rows": _minute_rows_layout,
           "partials": _partials}


async def run(args: argparse.Namespace, root: Path, servers: list[Server]) -> dict[str, Any]:
    hour = int(time.time()) // 3600 * 3600 - 2 * 86400  # two days back, as bench.fleet
    results: dict[str, Any] = {
        "command": command("bench.row_costs"), "machine": machine(),
        "postgres": as_postgres("postgres --version", pg_bindir() / "postgres",
                                "--version").strip(),
        "metrics_per_device": args.metrics, "points": args.points,
        "batch_points": args.batch_points, "event_rate_readings_per_s": args.event_rate,
        "runs": []}
    for size in args.sizes:
        fleet = Fleet(size, args.metrics, args.event_rate, (hour + 1800) * SECOND_US)
        layouts = {}
        for layout in args.layouts:
            layouts[layout] = await Run(args, root, servers, fleet, layout).measure()
            print(f"{size:,} devices, {layout}: {layouts[layout]}", flush=True)
        results["runs"].append({"devices": size, "layouts": layouts})
    smallest, largest = results["runs"][0]["layouts"], results["runs"][-1]["layouts"]
    results["largest_vs_smallest"] = {
        layout: round(largest[layout]["points_per_s"] / smallest[layout]["points_per_s"], 3)
        for layout in args.layouts}
    return results


def report(results: dict[str, Any]) -> list[str]:
    layouts = list(results["largest_vs_smallest"])
    lines = ["| devices | " + " | ".join(f"{name}: points/s (us a point)" for name in layouts)
             + " |", "|---" * (len(layouts) + 1) + "|"]
    for r in results["runs"]:
        lines.append(f"| {r['devices']:,} | " + " | ".join(
            f"{r['layouts'][n]['points_per_s']:,} ({r['layouts'][n]['us_per_point']})"
            for n in layouts) + " |")
    lines.append("| largest / smallest | " + " | ".join(
        f"{results['largest_vs_smallest'][n]}" for n in layouts) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda text: sorted(int(s) for s in text.split(",")),
                        default=[1_000, 1_000_000], help="comma-separated fleet sizes")
    parser.add_argument("--layouts", type=lambda text: text.split(","), default=list(LAYOUTS),
                        help=f"comma-separated, of {', '.join(LAYOUTS)}")
    parser.add_argument("--metrics", type=int, default=5, help="metrics (series) per device")
    parser.add_argument("--points", type=int, default=5_000_000,
                        help="points written per size and layout")
    parser.add_argument("--batch-points", type=int, default=SinkSettings.batch_points)
    parser.add_argument("--event-rate", type=float, default=10_000,
                        help="readings per second of event time across the fleet")
    parser.add_argument("--keep-dir", action="store_true",
                        help="keep the run's folder (data dir, logs); the server is stopped")
    parser.add_argument("--output", type=Path, default=RESULTS / "row_costs.json")
    args = parser.parse_args()
    if unknown := set(args.layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts {sorted(unknown)}: choose of {', '.join(LAYOUTS)}")
    if len(args.sizes) < 2:
        parser.error("--sizes needs two sizes at least (a ratio of the largest to the "
                     "smallest)")
    results = run_with_servers(parser, "bench-row-costs-", args.keep_dir,
                               functools.partial(run, args))
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

"""Device query routes, on every worker (registered on ``streams.application.app`` when imported).

- ``GET /devices/{id}/latest``: ``{"device_id", "time", "metrics": {name: value},
  "times": {name: time}}``: the newest value of each metric; ``time`` is the newest of
  them.
- ``GET /devices/{id}/readings?metric=&start=&end=&limit=``: raw points with
  ``start <= time < end`` ordered by time then metric. ``end`` defaults to now, ``start``
  to an hour before ``end``; the range may not exceed ``QUERY_RAW_MAX_RANGE`` hours;
  ``limit`` (default 1000) may not exceed ``QUERY_MAX_ROWS``. ``truncated`` says there was
  more.
- ``GET /devices/{id}/aggregates?resolution=&metric=&start=&end=&limit=``: for each
  metric, the buckets starting in ``[start, end)`` (default: the last 24 hours) as
  columns ``{"bucket": [...], "count": [...], "sum": [...], "min": [...], "max": [...]}``
  in bucket order (column arrays: compact, chart-ready, and cheap to build for thousands
  of buckets; the mean is sum / count). ``resolution`` is ``1m`` or ``1h`` (the downsampled tables)
  or ``raw`` (one bucket per point, count 1); when absent it is picked from the range:
  ``raw`` up to 2 hours, ``1m`` up to 3 days, ``1h`` beyond. At most ``limit`` buckets per
  metric (default and maximum ``QUERY_MAX_ROWS``).

Times are RFC 3339 with a zone (a ``+`` that arrived as a space is taken for ``+``);
answers carry UTC times ending in ``Z``. A bad parameter gets 400, an unknown device 404,
a database that is down or too slow 503, always as JSON ``{"error": ...}``: never a stack
trace. Every answer carries ``Server-Timing: db;dur=..., app;dur=...`` (milliseconds the
worker spent on it, and the part of that spent waiting for the database). Queries go to
pools of their own: on ``READ_DB_HOST`` (a read replica) when set, falling back to the
database the workers write to while the replica is down or lags (``web.read_route``),
else on that database; they have no statement cache, so every query is planned with its
time bounds and touches only the chunks in range.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import operator
import re
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping

import asyncpg
import orjson
from faust.web import Request, Response, View

from schema.timestamps import parse_rfc3339
from schema.validation import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from sinks.postgres import connect_kwargs
from streams.application import app, pipeline_stats, settings
from streams.settings import Settings
from web.errors import RETRY_AFTER_SECONDS, ClientError
from web.packed_buckets import in_bucket_order, unpack_buckets
from web.pg_wire import copy_rows
from web.read_route import ReadRoute

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1000
DEFAULT_READINGS_RANGE = timedelta(hours=1)
DEFAULT_AGGREGATES_RANGE = timedelta(hours=24)
AUTO_RAW_UP_TO = timedelta(hours=2)
AUTO_1M_UP_TO = timedelta(days=3)
# /latest looks this far back first (only the newest chunks are planned and read); a
# metric with nothing that recent is then looked up without a bound.
LATEST_WINDOW = timedelta(days=1)
RESOLUTIONS = ("raw", "1m", "1h")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OFFSET_AS_SPACE = re.compile(r"(.*[0-9]) ([0-9]{2}:[0-9]{2})")
_JSON = "application/json"
_unpack_double = struct.Struct(">d").unpack
_FIRST = operator.itemgetter(0)


# ------------------------------------------------------------------------------ parameters

@dataclass(frozen=True)
class Limits:
    """The request limits (from the settings)."""

    raw_max_range: timedelta = timedelta(hours=24)
    max_rows: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(timedelta(hours=settings.query.raw_max_range), settings.query.max_rows)


def parse_time(name: str, value: str) -> datetime:
    """An RFC 3339 date-time with a zone, as an aware UTC datetime; ClientError otherwise."""
    fixed = _OFFSET_AS_SPACE.fullmatch(value)
    if fixed:  # "+01:00" in a query string decodes to " 01:00" unless sent as %2B
        value = f"{fixed.group(1)}+{fixed.group(2)}"
    us = parse_rfc3339(value)
    if isinstance(us, str):
        raise ClientError(f"{name}: {us.removeprefix('time: ')}")
    return _EPOCH + timedelta(microseconds=us)


def _single(getall: Any, name: str) -> str | None:
    values = getall(name, [])
    if len(values) > 1:
        raise ClientError(f"{name} given {len(values)} times; give it once")
    return values[0] if values else None


def check_params(query: Any, allowed: tuple[str, ...]) -> dict[str, str]:
    """The known parameters, each given at most once; ClientError for anything else."""
    unknown = sorted(set(query.keys()) - set(allowed))
    if unknown:
        raise ClientError(f"unknown parameter(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(allowed)}")
    getall = getattr(query, "getall", lambda name, default: [query[name]] if name in query
                     else default)
    params = {}
    for name in allowed:
        value = _single(getall, name)
        if value is not None:
            params[name] = value
    return params


def check_device(device_id: str) -> str:
    if DEVICE_ID_PATTERN.fullmatch(device_id) is None:
        raise ClientError("device id must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return device_id


def check_metric(params: Mapping[str, str]) -> str | None:
    metric = params.get("metric")
    if metric is not None and METRIC_NAME_PATTERN.fullmatch(metric) is None:
        raise ClientError("metric must be 1-128 characters of A-Z a-z 0-9 _ . : - "
                         "starting with a letter or _")
    return metric


def check_range(params: Mapping[str, str], now: datetime, default_span: timedelta,
                max_span: timedelta | None, what: str) -> tuple[datetime, datetime]:
    """``(start, end)`` from the parameters: RFC 3339, start < end, at most ``max_span``."""
    end = parse_time("end", params["end"]) if "end" in params else None
    start = parse_time("start", params["start"]) if "start" in params else None
    if end is None:
        end = now if start is None or start < now else _shifted(start, default_span)
    if start is None:
        start = _shifted(end, -default_span)
    if not start < end:
        raise ClientError("start must be before end")
    if max_span is not None and end - start > max_span:
        raise ClientError(f"range too long for {what}: {_span(end - start)} > {_span(max_span)}")
    return start, end


def _shifted(moment: datetime, span: timedelta) -> datetime:
    """``moment + span``, held within the years 1-9999 that ``parse_time`` accepts."""
    try:
        return moment + span
    except OverflowError:
        edge = datetime.max if span > timedelta(0) else datetime.min
        return edge.replace(tzinfo=timezone.utc)


def check_limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    raw = params.get("limit")
    if raw is None:
        return min(default, maximum)
    if not raw.isascii() or not raw.isdigit():
        raise ClientError(f"limit must be a whole number from 1 to {maximum}")
    limit = int(raw)
    if not 1 <= limit <= maximum:
        raise ClientError(f"limit must be from 1 to {maximum}, got {limit}")
    return limit


def pick_resolution(start: datetime, end: datetime,
                    raw_max_range: timedelta = AUTO_RAW_UP_TO) -> str:
    """raw for short ranges, then 1m, then 1h."""
    span = end - start
    if span <= min(AUTO_RAW_UP_TO, raw_max_range):
        return "raw"
    return "1m" if span <= AUTO_1M_UP_TO else "1h"


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"


# ------------------------------------------------------------------------------ SQL

# Newest point of each series of the device within the window (NULLs when none there), in
# one round trip: COPY ... TO STDOUT is a single simple-protocol statement, its own
# implicit transaction (safe through a transaction pooler), where a parameterised query
# with the statement cache off costs BEGIN, Parse, Bind/Execute and COMMIT. The literals
# are safe: the device id matches DEVICE_ID_PATTERN (no quote) and the bound is an ISO
# timestamp of ours. Time as epoch microseconds and value as its IEEE bytes: exact, and
# independent of DateStyle and extra_float_digits.
LATEST_COPY = """
SELECT s.series_id, s.metric, (extract(epoch FROM r.time) * 1000000)::bigint,
       encode(float8send(r.value), 'hex')
FROM storage.series s
LEFT JOIN LATERAL (
    SELECT time, value FROM storage.readings r
    WHERE r.series_id = s.series_id AND r.time >= '{since}'::timestamptz
    ORDER BY r.time DESC LIMIT 1
) r ON true
WHERE s.device_id = '{device}'
"""  # run as COPY (...) TO STDOUT by copy_from_query

LATEST_UNBOUNDED = """
SELECT s.series_id, r.time, r.value
FROM unnest($1::integer[]) AS s(series_id)
CROSS JOIN LATERAL (
    SELECT time, value FROM storage.readings r
    WHERE r.series_id = s.series_id
    ORDER BY r.time DESC LIMIT 1
) r
"""

READINGS = """
SELECT r.time, s.metric, r.value
FROM storage.series s
JOIN storage.readings r ON r.series_id = s.series_id
WHERE s.device_id = $1 AND r.time >= $2 AND r.time < $3 {metric}
ORDER BY r.time, s.metric
LIMIT $4
"""

# Per series (metric) of the device, its first ``limit`` buckets in the range, one row per
# metric: each inner scan walks the (series_id, bucket) index in order and stops at the
# limit, nothing is sorted on the server. The buckets come packed in one bytea, 40 bytes
# each: the binary send format (big-endian, exact bits) of bucket (microseconds since
# 2000-01-01), count, sum, min and max, which the worker unpacks with a few C calls
# (``array``, ``memoryview``) instead of arrays whose every element the server frames and
# asyncpg decodes one at a time. It runs as ``COPY (...) TO STDOUT``: one simple-protocol
# statement, one round trip, its own implicit transaction (safe through a transaction
# pooler), where a parameterised query with the statement cache off costs Parse/Describe
# and Bind/Execute round trips (and BEGIN/COMMIT in a transaction); every hand-over
# between processes is a chance to wait for a busy core (the layouts compared:
# docs/performance.md#queries). The literals are safe: ids and metric names match their
# patterns (no quote) and are quoted anyway, times are our own ISO text. The buckets
# follow the subquery's order (checked in Python, sorted there if ever not).
AGGREGATES_COPY = """
SELECT s.metric, a.packed
FROM storage.series s
CROSS JOIN LATERAL (
    SELECT string_agg(timestamptz_send(bucket) || int8send(count) || float8send(sum)
                      || float8send(min) || float8send(max), ''::bytea) AS packed
    FROM (SELECT bucket, count, sum, min, max FROM storage.{table} a
          WHERE a.series_id = s.series_id AND a.bucket >= {start}::timestamptz
            AND a.bucket < {end}::timestamptz
          ORDER BY a.bucket LIMIT {limit}) ordered
) a
WHERE s.device_id = {device} AND a.packed IS NOT NULL {metric}
"""  # run as COPY (...) TO STDOUT (FORMAT binary) by copy_from_query


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings: only ' is special)."""
    return "'" + text.replace("'", "''") + "'"


def aggregates_copy_sql(table: str, device_id: str, metric: str | None, start: datetime,
                        end: datetime, limit: int) -> str:
    return AGGREGATES_COPY.format(
        table=table, device=_literal(device_id), start=_literal(start.isoformat()),
        end=_literal(end.isoformat()), limit=int(limit),
        metric=f"AND s.metric = {_literal(metric)}" if metric is not None else "")


RAW_AGGREGATES = """
SELECT s.metric, r.times, r.vals
FROM storage.series s
CROSS JOIN LATERAL (
    SELECT array_agg(time) AS times, array_agg(value) AS vals
    FROM (SELECT time, value FROM storage.readings r
          WHERE r.series_id = s.series_id AND r.time >= $2 AND r.time < $3
          ORDER BY r.time LIMIT $4) ordered
) r
WHERE s.device_id = $1 AND r.times IS NOT NULL {metric}
"""

KNOWN_DEVICE = "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)"

_TABLES = {"1m": "readings_1m", "1h": "readings_1h"}


def _with_metric(sql: str, metric: str | None, **names: str) -> str:
    return sql.format(metric="AND s.metric = $5" if metric is not None else "", **names)


def _args(metric: str | None, *args: Any) -> tuple[Any, ...]:
    return (*args, metric) if metric is not None else args


# ------------------------------------------------------------------------------ the pool

def read_connect_kwargs(settings: Settings, host: str, port: int,
                        database: str) -> dict[str, Any]:
    """Connection arguments of a read pool: the read-only role, no statement cache (so each
    query is planned with its own time bounds), QUERY_TIMEOUT."""
    kwargs = connect_kwargs(settings, host=host)
    kwargs["port"] = port
    kwargs["database"] = database
    kwargs["user"], kwargs["password"] = settings.read_db.user, settings.read_db.password
    kwargs["statement_cache_size"] = 0
    kwargs["command_timeout"] = settings.query.timeout
    kwargs["server_settings"] = {"application_name": "devicestream-queries"}
    return kwargs


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: the read pools only run read-only transactions (no session
    state), and asyncpg's default reset costs a round trip on every release."""


def read_route(settings: Settings) -> ReadRoute:
    """The read pools: the replica's (READ_DB_HOST/READ_DB_PORT/READ_DB_NAME, when any is
    set; e.g. pgBouncer's read entry) and the primary's, opened on first use and shown in
    the stats as ``read`` (the one reads go to normally) and ``read-primary`` (the
    fallback)."""
    replica = (read_connect_kwargs(settings, settings.read_db.host or settings.db.host,
                                   settings.read_db.port or settings.db.port,
                                   settings.read_db.name or settings.db.name)
               if settings.read_db.host or settings.read_db.port or settings.read_db.name
               else None)

    async def open_pool(target: str, kwargs: Mapping[str, Any]) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            min_size=0, max_size=settings.read_db.pool_size,
            max_inactive_connection_lifetime=60, reset=_keep_session, **kwargs)
        pipeline_stats.register_pool(
            "read-primary" if replica is not None and target == "primary" else "read", pool)
        return pool

    return ReadRoute(settings, open_pool, replica,
                     read_connect_kwargs(settings, settings.db.host, settings.db.port,
                                         settings.db.name))


# ------------------------------------------------------------------------------ queries

# Seconds the current request spent in the database (pool wait, round trips, transfer),
# shown in its Server-Timing header next to the worker's total.
_DB_SECONDS: contextvars.ContextVar[float] = contextvars.ContextVar("db_seconds", default=0.0)


@contextlib.contextmanager
def _in_database() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _DB_SECONDS.set(_DB_SECONDS.get() + time.perf_counter() - started)


class DeviceQueries:
    """The three queries, on a pool; raise ClientError for 400/404."""

    def __init__(self, route: ReadRoute, limits: Limits) -> None:
        self._route = route
        self.limits = limits

    async def latest(self, device_id: str, now: datetime) -> dict[str, Any]:
        check_device(device_id)  # the COPY below inlines it: it must hold no quote
        since = (now - LATEST_WINDOW).isoformat()
        chunks: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            chunks.append(chunk)

        with _in_database():
            async with self._route.acquire() as conn:
                await conn.copy_from_query(LATEST_COPY.format(device=device_id, since=since),
                                           output=collect)
                values: dict[str, tuple[datetime, float]] = {}
                older: dict[int, str] = {}
                for line in b"".join(chunks).decode().splitlines():
                    series_id, metric, us, value = line.split("\t")
                    if us == "\\N":
                        older[int(series_id)] = metric
                    else:
                        values[metric] = (_EPOCH + timedelta(microseconds=int(us)),
                                          _unpack_double(bytes.fromhex(value))[0])
                if older or not values:
                    async with conn.transaction(readonly=True):
                        if older:
                            for r in await conn.fetch(LATEST_UNBOUNDED, list(older)):
                                values[older[r["series_id"]]] = (r["time"], r["value"])
                        if not values and not await conn.fetchval(KNOWN_DEVICE, device_id):
                            raise ClientError(f"unknown device {device_id!r}", 404)
        names = sorted(values)
        return {
            "device_id": device_id,
            "time": max((t for t, _ in values.values()), default=None),
            "metrics": {m: values[m][1] for m in names},
            "times": {m: values[m][0] for m in names},
        }

    async def readings(self, device_id: str, params: Mapping[str, str],
                       now: datetime) -> dict[str, Any]:
        metric = check_metric(params)
        start, end = check_range(params, now, DEFAULT_READINGS_RANGE,
                                 self.limits.raw_max_range, "raw readings")
        limit = check_limit(params, DEFAULT_LIMIT, self.limits.max_rows)
        sql = _with_metric(READINGS, metric)
        with _in_database():
            async with self._route.acquire() as conn, conn.transaction(readonly=True):
                rows = await conn.fetch(sql, *_args(metric, device_id, start, end, limit + 1))
                if not rows and not await conn.fetchval(KNOWN_DEVICE, device_id):
                    raise ClientError(f"unknown device {device_id!r}", 404)
        truncated = len(rows) > limit
        points = [{"time": r[0], "metric": r[1], "value": r[2]} for r in rows[:limit]]
        return {"device_id": device_id, "metric": metric, "start": start, "end": end,
                "limit": limit, "count": len(points), "truncated": truncated,
                "readings": points}

    async def aggregates(self, device_id: str, params: Mapping[str, str],
                         now: datetime) -> dict[str, Any]:
        check_device(device_id)  # the COPY below inlines it (quoted)
        metric = check_metric(params)
        resolution = params.get("resolution")
        if resolution is not None and resolution not in RESOLUTIONS:
            raise ClientError(f"resolution must be one of {', '.join(RESOLUTIONS)}, "
                             f"got {resolution!r}")
        max_span = self.limits.raw_max_range if resolution == "raw" else None
        start, end = check_range(params, now, DEFAULT_AGGREGATES_RANGE, max_span,
                                 "raw resolution")
        resolution = resolution or pick_resolution(start, end, self.limits.raw_max_range)
        limit = check_limit(params, self.limits.max_rows, self.limits.max_rows)
        with _in_database():
            async with self._route.acquire() as conn:
                if resolution == "raw":
                    rows = await conn.fetch(_with_metric(RAW_AGGREGATES, metric),
                                            *_args(metric, device_id, start, end, limit + 1))
                else:
                    rows = [(row[0].decode(), *row[1:]) for row in await copy_rows(
                        conn, aggregates_copy_sql(_TABLES[resolution], device_id, metric,
                                                  start, end, limit + 1))]
                if not rows and not await conn.fetchval(KNOWN_DEVICE, device_id):
                    raise ClientError(f"unknown device {device_id!r}", 404)
        truncated = False
        series: dict[str, dict[str, Any]] = {}
        for row in sorted(rows, key=_FIRST):
            if resolution == "raw":
                times, values = in_bucket_order(list(row)[1:])
                if len(times) > limit:
                    truncated = True
                    times, values = times[:limit], values[:limit]
                series[row[0]] = {"bucket": times, "count": [1] * len(values), "sum": values,
                                  "min": values, "max": values}
            else:
                buckets, counts, sums, lows, highs, cut = unpack_buckets(row[1], limit)
                truncated = truncated or cut
                series[row[0]] = {"bucket": buckets, "count": counts, "sum": sums,
                                  "min": lows, "max": highs}
        return {"device_id": device_id, "resolution": resolution, "metric": metric,
                "start": start, "end": end, "limit": limit, "truncated": truncated,
                "count": sum(len(c["count"]) for c in series.values()),
                "aggregates": series}


# ------------------------------------------------------------------------------ routes

reads = read_route(settings)
queries = DeviceQueries(reads, Limits.from_settings(settings))


def encode(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


@app.task
async def measure_read_replica() -> None:
    """Keep the read replica's lag sample fresh (until the worker stops)."""
    if reads.replica is not None:
        await reads.replica.run()


@app.on_before_shutdown.connect
async def _close_read_pools(app: Any, /, *args: Any, **kwargs: Any) -> None:
    await reads.close()


class DeviceView(View):
    """Base of the device routes: orjson answers; failures become JSON (``web.errors``)."""

    async def dispatch(self, request: Any) -> Any:
        started = time.perf_counter()
        _DB_SECONDS.set(0.0)
        response = await self._dispatch(request)
        # How long the worker took (``app``: parsing, query, building, encoding) and the
        # part of it spent waiting for the database (``db``), for clients and benchmarks.
        response.headers["Server-Timing"] = (
            f"db;dur={_DB_SECONDS.get() * 1000:.2f}, "
            f"app;dur={(time.perf_counter() - started) * 1000:.2f}")
        return response

    async def _dispatch(self, request: Any) -> Any:
        try:
            return await super().dispatch(request)
        except asyncio.TimeoutError:
            raise ClientError(f"query took longer than {settings.query.timeout:g}s", 503,
                              {"Retry-After": RETRY_AFTER_SECONDS}) from None

    def answer(self, body: Any, status: int = 200,
               headers: dict[str, str] | None = None) -> Response:
        return self.bytes(encode(body), content_type=_JSON, status=status, headers=headers)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@app.page("/devices/{device_id}/latest")
class DeviceLatest(DeviceView):
    """The newest value of each metric of a device."""

    async def get(self, request: Request, device_id: str) -> Response:
        check_params(request.query, ())
        return self.answer(await queries.latest(check_device(device_id), _now()))


@app.page("/devices/{device_id}/readings")
class DeviceReadings(DeviceView):
    """Raw points of a device in a time range."""

    async def get(self, request: Request, device_id: str) -> Response:
        params = check_params(request.query, ("metric", "start", "end", "limit"))
        return self.answer(await queries.readings(check_device(device_id), params, _now()))


@app.page("/devices/{device_id}/aggregates")
class DeviceAggregates(DeviceView):
    """Each metric's buckets of a device in a time range (1m, 1h, or raw points)."""

    async def get(self, request: Request, device_id: str) -> Response:
        params = check_params(request.query,
                              ("resolution", "metric", "start", "end", "limit"))
        return self.answer(await queries.aggregates(check_device(device_id), params, _now()))

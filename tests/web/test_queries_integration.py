"""The device query routes against the real database: in-process (the Faust views on an
aiohttp test server) and once on a real worker."""
from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer

from sinks.postgres import create_pool
from sinks.timescale import TimescaleSink
from streams.app import app
from streams.settings import Settings
from tests.stack import SETTINGS, db_connect, fleet, free_port, unique, wait_for
from web import queries as q
from web.errors import json_errors

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc).replace(second=0, microsecond=0)
MINUTE = timedelta(minutes=1)


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _points(device: str) -> list[tuple[int, str, str, float]]:
    """t every 20 s for the last 3 hours, h every minute, and one 'old' point 3 days ago."""
    points = []
    for i in range(3 * 180):
        points.append((_us(NOW - i * MINUTE / 3 + timedelta(seconds=1)), device, "t", i / 4))
    for i in range(3 * 60):
        points.append((_us(NOW - i * MINUTE + timedelta(seconds=2)), device, "h", 50 - i / 8))
    points.append((_us(NOW - timedelta(days=3)), device, "old", -7.5))
    return points


@pytest.fixture(scope="module")
def device() -> str:
    return unique("query-")


@pytest.fixture
async def stored(stack: None, device: str) -> str:
    """The device's points, written once per test through the real sink (idempotent)."""
    pool = await create_pool(SETTINGS)
    try:
        await TimescaleSink(pool).write(_points(device))
    finally:
        await pool.close()
    return device


def _routes() -> aiohttp_web.Application:
    web_app = aiohttp_web.Application(middlewares=[json_errors])
    for path, view in app.web.views.items():
        if path.startswith("/devices/"):
            async def handler(request: aiohttp_web.Request, view: Any = view) -> Any:
                return await view(request)
            for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
                web_app.router.add_route(method, path, handler)
    return web_app


async def queries_client(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> TestClient:
    route = q.read_route(settings)
    monkeypatch.setattr(q, "queries", q.DeviceQueries(route, q.Limits.from_settings(settings)))
    client = TestClient(TestServer(_routes()))
    await client.start_server()
    client.read_pool = route  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    test_client = await queries_client(monkeypatch, SETTINGS)
    yield test_client
    await test_client.close()
    await test_client.read_pool.close()  # type: ignore[attr-defined]


async def _get(client: TestClient, path: str, **params: str) -> tuple[int, Any]:
    response = await client.get(path, params=params)
    body = await response.read()
    assert response.content_type == "application/json", body[:200]
    return response.status, orjson.loads(body)


def _t(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_latest_gives_the_newest_value_of_each_metric_even_an_old_one(
        client: TestClient, stored: str) -> None:
    status, body = await _get(client, f"/devices/{stored}/latest")
    assert status == 200, body
    assert body["device_id"] == stored
    assert body["metrics"] == {"h": 50.0, "old": -7.5, "t": 0.0}
    assert _t(body["time"]) == NOW + timedelta(seconds=2)
    assert _t(body["times"]["old"]) == NOW - timedelta(days=3)
    assert _t(body["times"]["t"]) == NOW + timedelta(seconds=1)


async def test_readings_in_a_range_ordered_with_metric_filter_and_limit(
        client: TestClient, stored: str) -> None:
    start, end = NOW - 10 * MINUTE, NOW
    status, body = await _get(client, f"/devices/{stored}/readings",
                              start=_iso(start), end=_iso(end))
    assert status == 200, body
    rows = body["readings"]
    # t: 30 points (every 20 s, offset 1 s), h: 10 points (every minute, offset 2 s)
    assert (body["count"], body["truncated"]) == (40, False)
    assert [(r["time"], r["metric"]) for r in rows] == sorted(
        (r["time"], r["metric"]) for r in rows)
    assert all(start <= _t(r["time"]) < end for r in rows)
    assert {r["metric"] for r in rows} == {"t", "h"}

    status, body = await _get(client, f"/devices/{stored}/readings", metric="h",
                              start=_iso(start), end=_iso(end), limit="4")
    assert status == 200, body
    assert (body["count"], body["truncated"], body["limit"]) == (4, True, 4)
    assert [r["metric"] for r in body["readings"]] == ["h"] * 4
    assert body["readings"][0] == {"time": _iso(start + timedelta(seconds=2)), "metric": "h",
                                   "value": 50 - 10 / 8}

    # default range: the last hour up to now
    status, body = await _get(client, f"/devices/{stored}/readings", metric="t")
    assert status == 200 and not body["truncated"]
    start, end = _t(body["start"]), _t(body["end"])
    assert end - start == timedelta(hours=1)
    expected = [p for p in _points(stored) if p[2] == "t" and _us(start) <= p[0] < _us(end)]
    assert body["count"] == len(expected)

    # a known device with nothing in the range: empty, not 404
    status, body = await _get(client, f"/devices/{stored}/readings",
                              start="2020-01-01T00:00:00Z", end="2020-01-01T01:00:00Z")
    assert (status, body["readings"]) == (200, [])


async def _expected(device: str, width: str, start: datetime, end: datetime) -> list[tuple]:
    conn = await db_connect()
    try:
        rows = await conn.fetch(
            "SELECT time_bucket($2::text::interval, time) AS b, metric, count(*), sum(value), "
            "min(value), max(value) FROM readings WHERE device_id = $1 GROUP BY 1, 2 "
            "HAVING time_bucket($2::text::interval, time) >= $3 "
            "AND time_bucket($2::text::interval, time) < $4 ORDER BY 1, 2",
            device, width, start, end)
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def _rows(body: dict) -> list[tuple]:
    """The column arrays of each metric as (bucket, metric, count, sum, min, max) rows."""
    rows = []
    for metric, c in body["aggregates"].items():
        assert len({len(column) for column in c.values()}) == 1, c
        assert c["bucket"] == sorted(c["bucket"])
        rows += [(_t(b), metric, n, total, lo, hi)
                 for b, n, total, lo, hi in zip(c["bucket"], c["count"], c["sum"], c["min"],
                                                c["max"])]
    return sorted(rows, key=lambda r: (r[0], r[1]))


async def test_aggregates_equal_sql_over_the_raw_readings(client: TestClient,
                                                          stored: str) -> None:
    start, end = NOW - 3 * timedelta(hours=1), NOW + MINUTE
    for resolution, width in (("1m", "1 minute"), ("1h", "1 hour")):
        status, body = await _get(client, f"/devices/{stored}/aggregates", resolution=resolution,
                                  start=_iso(start), end=_iso(end))
        assert status == 200, body
        assert body["resolution"] == resolution
        got, want = _rows(body), await _expected(stored, width, start, end)
        assert len(got) == len(want) and got
        for g, w in zip(got, want):
            assert g[:3] == w[:3] and g[4:] == w[4:] and math.isclose(g[3], w[3])
        assert body["count"] == len(got) and not body["truncated"]

    status, body = await _get(client, f"/devices/{stored}/aggregates", metric="old",
                              resolution="1h", start=_iso(NOW - timedelta(days=4)))
    assert status == 200 and body["aggregates"]["old"]["sum"] == [-7.5]

    # at most `limit` buckets per metric, the earliest ones
    status, body = await _get(client, f"/devices/{stored}/aggregates", resolution="1m",
                              start=_iso(start), end=_iso(end), limit="7")
    assert status == 200 and body["truncated"] and body["limit"] == 7
    assert {m: len(c["bucket"]) for m, c in body["aggregates"].items()} == {"h": 7, "t": 7}
    assert _t(body["aggregates"]["t"]["bucket"][0]) == start


async def test_resolution_is_picked_from_the_range(client: TestClient, stored: str) -> None:
    for span, expected in ((timedelta(minutes=30), "raw"), (timedelta(hours=5), "1m"),
                           (timedelta(days=5), "1h")):
        status, body = await _get(client, f"/devices/{stored}/aggregates",
                                  start=_iso(NOW - span), end=_iso(NOW))
        assert (status, body["resolution"]) == (200, expected), body
    status, body = await _get(client, f"/devices/{stored}/aggregates", metric="h",
                              start=_iso(NOW - 5 * MINUTE), end=_iso(NOW))
    h = body["aggregates"]["h"]
    assert h["count"] == [1] * 5
    assert h["min"][0] == h["max"][0] == h["sum"][0] == 50 - 5 / 8


async def test_bad_parameters_get_400_and_unknown_devices_404_as_json(
        client: TestClient, stored: str) -> None:
    cases = [
        (f"/devices/{stored}/readings", {"start": "yesterday"}, 400, "start: "),
        (f"/devices/{stored}/readings", {"end": "2026-11-28T17:00:00"}, 400, "time zone"),
        (f"/devices/{stored}/readings", {"start": "2026-11-28T17:00:00Z",
                                         "end": "2026-11-28T16:00:00Z"}, 400, "before end"),
        (f"/devices/{stored}/readings", {"start": "2026-11-01T00:00:00Z",
                                         "end": "2026-11-28T00:00:00Z"}, 400, "range too long"),
        (f"/devices/{stored}/readings", {"limit": "0"}, 400, "limit must be"),
        (f"/devices/{stored}/readings", {"limit": "100001"}, 400, "limit must be"),
        (f"/devices/{stored}/readings", {"metric": "9x"}, 400, "metric must be"),
        (f"/devices/{stored}/readings", {"device": "x"}, 400, "unknown parameter"),
        (f"/devices/{stored}/aggregates", {"resolution": "5m"}, 400, "resolution must be"),
        (f"/devices/{stored}/aggregates", {"resolution": "raw",
                                           "start": "2026-01-01T00:00:00Z"}, 400, "range too long"),
        (f"/devices/{stored}/latest", {"metric": "t"}, 400, "unknown parameter"),
        ("/devices/bad%20id/latest", {}, 400, "device id"),
        ("/devices/no-such-device-3f1/latest", {}, 404, "unknown device"),
        ("/devices/no-such-device-3f1/readings", {}, 404, "unknown device"),
        ("/devices/no-such-device-3f1/aggregates", {"resolution": "1h"}, 404, "unknown device"),
    ]
    for path, params, status, text in cases:
        got_status, body = await _get(client, path, **params)
        assert (got_status, list(body)) == (status, ["error"]), (path, params, body)
        assert text in body["error"], (path, params, body)
    response = await client.post(f"/devices/{stored}/latest")
    assert response.status == 405
    assert "error" in orjson.loads(await response.read())


async def test_a_database_that_cannot_be_reached_gives_503_json(
        monkeypatch: pytest.MonkeyPatch, stack: None) -> None:
    down = replace(SETTINGS, db=replace(SETTINGS.db, port=free_port()),  # the fallback
                   read_db=replace(SETTINGS.read_db, host="127.0.0.1", port=free_port()))
    client = await queries_client(monkeypatch, down)
    try:
        status, body = await _get(client, "/devices/any-device/latest")
    finally:
        await client.close()
        await client.read_pool.close()  # type: ignore[attr-defined]
    assert status == 503 and body["error"].startswith("database unavailable"), body


async def test_routes_on_a_real_worker(start_worker, stored: str) -> None:
    _, nothing = fleet("query-none-", 1)  # the worker consumes no device topic
    worker = start_worker("queries", DEVICE_FILTER=nothing, MAINTENANCE_INTERVAL="0")
    base = f"http://127.0.0.1:{worker.web_port}"
    answers: dict[str, tuple[int, Any]] = {}

    async def answered() -> bool:
        try:
            async with aiohttp.ClientSession() as session:
                for path in (f"/devices/{stored}/latest",
                             f"/devices/{stored}/readings?metric=t&limit=5",
                             f"/devices/{stored}/aggregates?resolution=1h",
                             "/devices/no-such-device-3f1/latest",
                             f"/devices/{stored}/readings?start=nope"):
                    async with session.get(base + path) as response:
                        answers[path] = (response.status, orjson.loads(await response.read()))
        except aiohttp.ClientConnectionError:
            return False
        return True

    await wait_for(answered, 60, "the worker's web server")
    statuses = [status for status, _ in answers.values()]
    assert statuses == [200, 200, 200, 404, 400], answers
    assert answers[f"/devices/{stored}/latest"][1]["metrics"]["old"] == -7.5
    assert len(answers[f"/devices/{stored}/readings?metric=t&limit=5"][1]["readings"]) == 5
    assert "Traceback" not in worker.log_text()

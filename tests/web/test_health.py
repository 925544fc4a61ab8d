"""The readiness rules and the /health routes, served in-process with chosen states."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.structs import TopicPartition as TP

from streams.app import app
from web import health
from web.health import Check, database_check, database_reachable, readiness_checks
from web.errors import json_errors

HEALTHY = dict(partitions=3, fetch_silence=0.5, database=Check(True, "reachable"),
               stalled=[], stall_seconds=60.0)


def test_a_worker_that_consumes_with_its_database_up_is_ready() -> None:
    checks = readiness_checks(**HEALTHY)
    assert list(checks) == ["joined", "fetching", "database", "not_stalled"]
    assert all(check.ok for check in checks.values())


@pytest.mark.parametrize("change, failing", [
    ({"partitions": None}, "joined"),
    ({"fetch_silence": None}, "fetching"),
    ({"fetch_silence": 31.0}, "fetching"),
    ({"database": Check(False, "database unreachable: OSError")}, "database"),
    ({"stalled": [TP("device-data-a", 3)]}, "not_stalled"),
])
def test_each_check_fails_alone(change: dict[str, Any], failing: str) -> None:
    checks = readiness_checks(**{**HEALTHY, **change})
    assert [name for name, check in checks.items() if not check.ok] == [failing]


def test_a_stall_names_its_partitions() -> None:
    stalled = [TP(f"device-data-d{i}", 0) for i in range(12)]
    detail = readiness_checks(**{**HEALTHY, "stalled": stalled})["not_stalled"].detail
    assert detail.startswith("12 partitions with lag and no commit for 60s: device-data-d0[0]")
    assert detail.endswith("and 2 more")


def test_the_watchdog_s_database_is_the_sample_s_not_the_last_write_s() -> None:
    """A write that timed out on a reachable database leaves it up for the watchdog."""
    assert database_reachable({"available": True, "error": None})
    assert not database_reachable({"available": False, "error": "OSError: refused"})
    assert not database_reachable(None), "never measured is not reachable"


def test_the_database_check_reads_the_last_write_then_the_sample() -> None:
    assert database_check(True, {"available": True}).ok
    assert not database_check(False, {"available": True}).ok
    down = database_check(True, {"available": False, "error": "OSError: refused"})
    assert not down.ok and "OSError: refused" in down.detail
    assert not database_check(True, None).ok, "never measured is not reachable"


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    web_app = aiohttp_web.Application(middlewares=[json_errors])
    for path, view in app.web.views.items():
        if path.startswith("/health/"):
            async def handler(request: aiohttp_web.Request, view: Any = view) -> Any:
                return await view(request)
            web_app.router.add_route("GET", path, handler)
    async with TestClient(TestServer(web_app)) as test_client:
        yield test_client


async def test_live_answers_200(client: TestClient) -> None:
    response = await client.get("/health/live")
    assert response.status == 200 and await response.json() == {"live": True}


async def test_ready_is_503_naming_each_failing_check(client: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    checks = readiness_checks(**{**HEALTHY, "partitions": None,
                                 "database": Check(False, "database unreachable: x")})
    monkeypatch.setattr(health, "readiness", lambda: checks)
    response = await client.get("/health/ready")
    assert response.status == 503
    body = await response.json()
    assert body["ready"] is False and body["failing"] == ["joined", "database"]
    assert body["checks"]["database"] == {"ok": False, "detail": "database unreachable: x"}
    monkeypatch.setattr(health, "readiness", lambda: readiness_checks(**HEALTHY))
    response = await client.get("/health/ready")
    assert response.status == 200 and (await response.json())["failing"] == []

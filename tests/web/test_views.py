"""The stats routes on the worker's aiohttp application, served in-process on loopback with
fake samples: JSON errors, waiting for a first measurement, content types."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.structs import TopicPartition as TP

from streams.app import app
from tests.stack import fake_sample
from web import views
from web.lag import LagSample, PartitionLag
from web.errors import json_errors


def _stats_routes() -> aiohttp_web.Application:
    """A fresh aiohttp application with the views registered on the Faust app (Faust's
    own application is bound to the first event loop that served it)."""
    web_app = aiohttp_web.Application(middlewares=[json_errors])
    for path, view in app.web.views.items():
        if path.startswith(("/pipeline/", "/metrics", "/dashboard")):
            async def handler(request: aiohttp_web.Request, view: Any = view) -> Any:
                return await view(request)
            for method in view.get_methods():
                web_app.router.add_route(method, path, handler)
    return web_app


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    monkeypatch.setattr(views, "FIRST_SAMPLE_WAIT_SECONDS", 0.1)
    monkeypatch.setattr(views, "lag_sample", fake_sample())
    monkeypatch.setattr(views, "database_sample", fake_sample())
    async with TestClient(TestServer(_stats_routes())) as test_client:
        yield test_client


LAG = LagSample(
    partitions={TP("device-data-a", 0): PartitionLag("device-data-a", 0, 3, 10, 4.5),
                TP("device-data-b", 0): PartitionLag("device-data-b", 0, 0, 5, 9.0)},
    assigned=frozenset({TP("device-data-a", 0)}), assignment_known=True)


async def test_lag_of_the_worker_and_of_the_group(client: TestClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "lag_sample", fake_sample(LAG, age=0))
    response = await client.get("/pipeline/lag")
    assert response.status == 200
    assert await response.json() == {"total_lag": 7, "partitions": [
        {"topic": "device-data-a", "partition": 0, "committed": 3, "end": 10, "lag": 7,
         "lag_seconds": 4.5}]}
    body = await (await client.get("/pipeline/lag?scope=group")).json()
    assert body["total_lag"] == 12 and len(body["partitions"]) == 2


async def test_lag_before_any_measurement_is_503_not_zero(client: TestClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    response = await client.get("/pipeline/lag")
    assert response.status == 503
    assert (await response.json())["error"].startswith("lag not measured yet")
    # measured, but the worker has not been assigned its partitions yet
    unassigned = LagSample(partitions=LAG.partitions, assigned=frozenset(),
                           assignment_known=False)
    monkeypatch.setattr(views, "lag_sample", fake_sample(unassigned, age=0))
    response = await client.get("/pipeline/lag")
    assert response.status == 503
    assert "no partition assignment yet" in (await response.json())["error"]
    assert (await client.get("/pipeline/lag?scope=group")).status == 200


async def test_a_stale_lag_whose_refresh_fails_is_not_served(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = fake_sample(LAG, age=600, error="KafkaConnectionError: broker down")
    monkeypatch.setattr(views, "lag_sample", stale)
    response = await client.get("/pipeline/lag")
    assert response.status == 503
    assert "broker down" in (await response.json())["error"]


async def test_bad_requests_get_json_errors(client: TestClient) -> None:
    response = await client.get("/pipeline/lag?scope=everything")
    assert response.status == 400
    assert "scope must be one of" in (await response.json())["error"]
    response = await client.post("/pipeline/throughput", data=b"{}")
    assert response.status == 405
    assert response.content_type == "application/json"
    assert "error" in await response.json()


async def test_a_failing_view_answers_json_500_without_a_stack_trace(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(stats: Any) -> dict[str, Any]:
        raise KeyError("boom")

    monkeypatch.setattr(views, "throughput_report", broken)
    response = await client.get("/pipeline/throughput")
    assert response.status == 500
    body = await response.json()
    assert body == {"error": "internal error: KeyError"}


async def test_throughput(client: TestClient) -> None:
    body = await (await client.get("/pipeline/throughput")).json()
    assert {"messages_total", "points_total", "rows_written_total", "dead_letters_total",
            "messages_per_second", "points_per_second", "rows_per_second"} <= body.keys()


async def test_db_state_is_served_from_the_sample(client: TestClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await client.get("/pipeline/db")).status == 503
    down = {"available": False, "error": "OSError: refused", "pools": {}}
    monkeypatch.setattr(views, "database_sample", fake_sample(down, age=0))
    response = await client.get("/pipeline/db")
    assert response.status == 200
    body = await response.json()
    assert body["available"] is False and body["error"] == "OSError: refused"
    assert body["sample_age_seconds"] >= 0


async def test_dashboard_data_is_one_small_answer(client: TestClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    body = await (await client.get("/dashboard/data")).json()
    assert body["lag"]["worker"] is None and body["db"] is None  # nothing measured yet
    assert body["throughput"]["messages_total"] >= 0
    monkeypatch.setattr(views, "lag_sample", fake_sample(LAG, age=0))
    monkeypatch.setattr(views, "database_sample", fake_sample({"available": True}, age=0))
    body = await (await client.get("/dashboard/data")).json()
    assert body["lag"] == {"worker": 7, "group": 12, "worker_partitions": 1,
                           "group_partitions": 2, "worker_seconds": 4.5, "group_seconds": 9.0}
    assert body["db"]["available"] is True


async def test_metrics_dashboard_and_script_content_types(client: TestClient) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "devicestream_messages_total" in await response.text()
    response = await client.get("/dashboard")
    assert response.headers["Content-Type"].startswith("text/html")
    page = await response.text()
    assert '<script src="/dashboard/dashboard.js">' in page
    assert "http://" not in page.replace("http://www.w3.org", "")  # nothing from elsewhere
    response = await client.get("/dashboard/dashboard.js")
    assert response.headers["Content-Type"].startswith("text/javascript")
    script = await response.text()
    assert "/dashboard/data" in script and "https://" not in script


def test_lag_covers_the_topics_the_workers_follow() -> None:
    from streams.settings import Settings

    per_device = views.followed_topics(Settings.from_env({}))
    assert per_device("device-data-sensor-1")
    assert not per_device("device-data") and not per_device("device-data.dlq")
    filtered = views.followed_topics(Settings.from_env({"DEVICE_FILTER": "north-"}))
    assert filtered("device-data-north-7") and not filtered("device-data-south-7")
    shared = views.followed_topics(Settings.from_env({"TOPIC_MODE": "shared"}))
    assert shared("device-data") and not shared("device-data-sensor-1")
    both = views.followed_topics(Settings.from_env({"TOPIC_MODE": "both",
                                                    "DEVICE_FILTER": "north-"}))
    assert both("device-data") and both("device-data-north-7")
    assert not both("device-data-south-7") and not both("device-data.dlq")
    from streams import commands, subscription

    assert views.followed_topics is subscription.followed_topics is commands.followed_topics, \
        "the lag route, replay and the subscription share one rule set"

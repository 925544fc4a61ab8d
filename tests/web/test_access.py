"""READ_TOKEN: the read routes need it (bearer or HTTP Basic), health and POST /ingest do
not; unset, everything is open. The middleware runs in a real aiohttp server."""
from __future__ import annotations

import base64
import logging
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from web.access import open_web_warning, read_access

TOKEN = "read-token-0123456789"
ROUTES = [("GET", "/health/live"), ("GET", "/health/ready"), ("POST", "/ingest"),
          ("GET", "/ingest"), ("GET", "/devices/d/latest"), ("GET", "/dashboard"),
          ("GET", "/dashboard/data"), ("GET", "/metrics"), ("GET", "/pipeline/db"),
          ("GET", "/"), ("GET", "/router/")]
OPEN = {("GET", "/health/live"), ("GET", "/health/ready"), ("POST", "/ingest")}


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path})


async def _client(token: str) -> TestClient:
    app = web.Application(middlewares=[read_access(token)])
    for method, path in ROUTES:
        app.router.add_route(method, path, _ok)
    return TestClient(TestServer(app))


@pytest.fixture
async def guarded() -> AsyncIterator[TestClient]:
    async with await _client(TOKEN) as client:
        yield client


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.mark.parametrize("method,path", ROUTES)
async def test_without_the_token_only_health_and_post_ingest_answer(guarded, method,
                                                                    path) -> None:
    response = await guarded.request(method, path)
    if (method, path) in OPEN:
        assert response.status == 200
        return
    assert response.status == 401
    assert "READ_TOKEN" in (await response.json())["error"]
    challenges = response.headers.getall("WWW-Authenticate")
    assert [c.split()[0] for c in challenges] == ["Bearer", "Basic"]


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {TOKEN}"},
    {"Authorization": f"bearer {TOKEN}"},
    basic("anyone", TOKEN),
    basic("", TOKEN),
])
async def test_the_token_as_bearer_or_basic_password_opens_every_route(guarded,
                                                                        headers) -> None:
    for method, path in ROUTES:
        response = await guarded.request(method, path, headers=headers)
        assert response.status == 200, (method, path)


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},  # not base64 of user:password
    basic(TOKEN, "wrong"),  # the token as the user name
    {"Authorization": "Bearer"},
    {"Authorization": "Digest x"},
])
async def test_a_wrong_token_gets_401_and_is_never_logged(guarded, headers, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    response = await guarded.get("/metrics", headers=headers)
    assert response.status == 401
    assert TOKEN not in caplog.text and TOKEN[:-1] not in caplog.text


async def test_paths_are_matched_exactly_not_by_prefix(guarded) -> None:
    for path in ("/health/live/../../metrics", "/health/", "/health/livex", "/ingest/"):
        response = await guarded.get(path)
        assert response.status in (401, 404), path
        assert response.status != 200


async def test_without_a_read_token_everything_is_open() -> None:
    async with await _client("") as client:
        for method, path in ROUTES:
            assert (await client.request(method, path)).status == 200


@pytest.mark.parametrize("bind,token,warns", [
    ("127.0.0.1", "", False), ("::1", "", False), ("localhost", "", False),
    ("0.0.0.0", "", True), ("10.1.2.3", "", True), ("worker.example", "", True),
    ("0.0.0.0", TOKEN, False),
])
def test_an_open_web_server_beyond_loopback_is_warned_of(bind, token, warns) -> None:
    warning = open_web_warning(bind, token)
    assert (warning is not None) == warns
    if warning:
        assert "READ_TOKEN" in warning and bind in warning

"""web.errors: every failure of a route is a JSON answer, in a real aiohttp server."""
from __future__ import annotations

import logging
from typing import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from web.errors import ClientError, json_errors

SECRET_HEADER = "Bearer secret-token-that-must-not-be-logged"


async def refuse(request: web.Request) -> web.Response:
    raise ClientError("limit must be from 1 to 10", 400)


async def too_slow(request: web.Request) -> web.Response:
    raise ClientError("query took longer than 10s", 503, {"Retry-After": "5"})


async def database_down(request: web.Request) -> web.Response:
    raise asyncpg.CannotConnectNowError("the database system is starting up")


async def bug(request: web.Request) -> web.Response:
    return {}["missing"]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[json_errors])
    for path, handler in (("/refuse", refuse), ("/slow", too_slow), ("/down", database_down),
                          ("/bug", bug)):
        app.router.add_get(path, handler)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.mark.parametrize("path,status,error,retry", [
    ("/refuse", 400, "limit must be from 1 to 10", None),
    ("/slow", 503, "query took longer than 10s", "5"),
    ("/down", 503, "database unavailable: CannotConnectNowError", "5"),
    ("/bug", 500, "internal error: KeyError", None),
    ("/nowhere", 404, "Not Found", None),
])
async def test_every_failure_is_json(client, caplog, path, status, error, retry) -> None:
    caplog.set_level(logging.DEBUG)
    response = await client.get(path, headers={"Authorization": SECRET_HEADER})
    assert response.status == status
    assert response.content_type == "application/json"
    assert await response.json() == {"error": error}
    assert response.headers.get("Retry-After") == retry
    assert "secret-token" not in caplog.text


async def test_a_bug_is_logged_with_its_traceback(client, caplog) -> None:
    await client.get("/bug")
    assert "GET /bug failed" in caplog.text and "KeyError" in caplog.text
    assert any(record.exc_info for record in caplog.records)


async def test_a_wrong_method_is_json_too(client) -> None:
    response = await client.post("/refuse")
    assert response.status == 405 and (await response.json())["error"]
    assert response.headers["Allow"] == "GET,HEAD"

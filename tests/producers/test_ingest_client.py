"""IngestClient against an aiohttp server standing in for POST /ingest: each device's
readings go with its own token, a gateway's together, refusals raise, 503s are retried."""
from __future__ import annotations

from collections import Counter
from typing import Any, AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from producers.ingest_client import MAX_READINGS_PER_REQUEST, IngestClient, IngestRefused
from web.credentials import device_token

SECRET = "s" * 32


class FakeIngest:
    """Answers 202 with the count, after ``unavailable`` 503s; records what it got."""

    def __init__(self, status: int = 202, unavailable: int = 0) -> None:
        self.status, self.unavailable = status, unavailable
        self.requests: list[tuple[str, list[dict[str, Any]]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if self.unavailable:
            self.unavailable -= 1
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"})
        body = orjson.loads(await request.read())
        self.requests.append((request.headers["Authorization"], body))
        if self.status != 202:
            return web.json_response({"error": "refused"}, status=self.status)
        return web.json_response({"accepted": len(body)}, status=202)


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeIngest, str]]:
    fake = FakeIngest()
    app = web.Application()
    app.router.add_post("/ingest", fake.handle)
    async with TestServer(app) as test_server:
        yield fake, str(test_server.make_url("/ingest"))


def readings(devices: list[str], each: int) -> list[dict[str, Any]]:
    return [{"device_id": d, "time": 1_700_000_000_000 + i, "metrics": {"t": float(i)}}
            for i in range(each) for d in devices]


async def test_each_devices_readings_go_with_its_own_token(server) -> None:
    fake, url = server
    sent = readings(["a", "b", "c"], MAX_READINGS_PER_REQUEST + 1)
    async with IngestClient(url, token_for=lambda d: device_token(SECRET, d)) as client:
        await client.send_many(sent)
    assert client.accepted == len(sent)
    for header, body in fake.requests:
        (device,) = {r["device_id"] for r in body}
        assert header == f"Bearer {device_token(SECRET, device)}"
    assert Counter(r["device_id"] for _, body in fake.requests for r in body) == \
        Counter(r["device_id"] for r in sent)
    assert len(fake.requests) == 6  # two requests a device: 500 readings, then 1


async def test_a_gateway_sends_every_devices_readings_together(server) -> None:
    fake, url = server
    async with IngestClient(url, gateway="gw-token") as client:
        await client.send_many(readings(["a", "b"], 3))
    assert [(h, len(b)) for h, b in fake.requests] == [("Bearer gw-token", 6)]


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_a_refusal_raises_on_flush(server, status) -> None:
    fake, url = server
    fake.status = status
    with pytest.raises(IngestRefused, match=str(status)):
        async with IngestClient(url, gateway="gw") as client:
            await client.send_many(readings(["a"], 1))


async def test_503_is_retried_until_accepted(server) -> None:
    fake, url = server
    fake.unavailable = 2
    async with IngestClient(url, gateway="gw") as client:
        await client.send_many(readings(["a"], 2))
    assert client.accepted == 2 and len(fake.requests) == 1


def test_either_device_tokens_or_a_gateway() -> None:
    with pytest.raises(ValueError):
        IngestClient("http://x/ingest")
    with pytest.raises(ValueError):
        IngestClient("http://x/ingest", token_for=str, gateway="g")

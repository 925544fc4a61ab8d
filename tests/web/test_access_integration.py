"""READ_TOKEN on a real worker: every route but the health checks and POST /ingest, Faust's
own pages included, answers 401 without the token and serves it with it."""
from __future__ import annotations

import base64

import aiohttp
import pytest

from tests.stack import fleet
from tests.web.test_ingest_integration import post, reading, web_ready

pytestmark = pytest.mark.integration

READ_TOKEN = "integration-read-token-2c9b"
GUARDED = ["/pipeline/throughput", "/pipeline/lag", "/pipeline/db", "/metrics", "/dashboard",
           "/dashboard/data", "/dashboard/dashboard.js", "/devices/x/latest", "/", "/router/",
           "/ingest"]


async def status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers or {},
                               timeout=aiohttp.ClientTimeout(total=30)) as response:
            return response.status


async def test_with_read_token_set_only_health_and_ingest_answer_without_it(
        start_worker) -> None:
    (device,), only = fleet("read-token-", 1)
    worker = start_worker("read-token", DEVICE_FILTER=only, READ_TOKEN=READ_TOKEN)
    await web_ready(worker)  # GET /ingest: 401 now, which web_ready accepts as "up"
    port = worker.web_port
    bearer = {"Authorization": f"Bearer {READ_TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{READ_TOKEN}".encode()).decode()}
    wrong = {"Authorization": f"Bearer {READ_TOKEN}0"}
    for path in GUARDED:
        assert await status(port, path) == 401, path
        assert await status(port, path, wrong) == 401, path
        with_token = await status(port, path, bearer)
        assert with_token != 401 and with_token == await status(port, path, basic), path
    assert await status(port, "/pipeline/throughput", bearer) == 200
    assert await status(port, "/health/live") == 200
    assert await status(port, "/health/ready") in (200, 503)
    assert await post(worker, [reading(device)]) == (202, {"accepted": 1})
    assert READ_TOKEN not in worker.log_text()

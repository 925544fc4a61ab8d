"""POST /ingest on a real worker of the local stack: readings reach ``readings``, a 400 publishes
nothing, and every status over real HTTP."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.topics import device_topic
from tests.stack import (
    SETTINGS,
    Worker,
    count_rows,
    db_connect,
    fleet,
    rows_at_least,
    wait_for,
)

pytestmark = pytest.mark.integration

ONE_MIB = 1_048_576
TOKEN = "integration-ingest-token-7f3a"


def reading(device: str, seconds: int = 0, **metrics: float) -> dict[str, Any]:
    moment = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=2)
    return {"device_id": device, "time": (moment + timedelta(seconds=seconds)).isoformat(),
            "metrics": metrics or {"temperature": 20.0 + seconds}}


async def post(worker: Worker, body: Any, headers: dict[str, str] | None = None,
               ) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{worker.web_port}/ingest", data=data,
                                headers=headers or {},
                                timeout=aiohttp.ClientTimeout(total=60)) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()


async def web_ready(worker: Worker, timeout: float = 60) -> None:
    """Wait until the worker's web server answers (GET /ingest is a 405, or a 401 with
    READ_TOKEN set)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.process is not None and worker.process.poll() is None, worker.log_text()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{worker.web_port}/ingest") as response:
                    if response.status in (401, 405):
                        return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"worker web server not up after {timeout}s")


async def topic_exists(topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=SETTINGS.kafka.brokers)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def stored(devices: list[str]) -> dict[tuple[str, str, datetime], float]:
    conn = await db_connect()
    try:
        rows = await conn.fetch("SELECT device_id, metric, time, value FROM readings "
                                "WHERE device_id = ANY($1)", devices)
    finally:
        await conn.close()
    return {(r["device_id"], r["metric"], r["time"]): r["value"] for r in rows}


@pytest.fixture
async def worker(start_worker) -> AsyncIterator[Worker]:
    devices, only = fleet("ingest-st-", 1)
    started = start_worker("ingest-status", DEVICE_FILTER=only)
    await web_ready(started)
    yield started


@pytest.mark.parametrize("mode", ["per-device", "shared"])
async def test_posted_readings_are_acknowledged_202_and_arrive_in_readings(
    start_worker, mode,
) -> None:
    devices, only = fleet(f"ingest-{mode}-", 3)
    worker = start_worker(f"ingest-{mode}", DEVICE_FILTER=only, TOPIC_MODE=mode)
    await web_ready(worker)
    body = [reading(d, i, temperature=i + n / 10, humidity=40.0) for i in range(5)
            for n, d in enumerate(devices)]
    assert await post(worker, body) == (202, {"accepted": 15})
    door = reading(devices[0], 30, door=True)  # once: its time is taken from the clock
    assert await post(worker, door) == (202, {"accepted": 1})
    expected = {(r["device_id"], m, datetime.fromisoformat(r["time"])): float(v)
                for r in body + [door] for m, v in r["metrics"].items()}
    await wait_for(lambda: rows_at_least(devices, len(expected)), 90, f"{len(expected)} rows")
    assert await stored(devices) == expected
    assert "Traceback" not in worker.log_text()


async def test_a_400_publishes_nothing_of_its_body(start_worker) -> None:
    (bad_device, sentinel), only = fleet("ingest-400-", 2)
    worker = start_worker("ingest-400", DEVICE_FILTER=only)
    await web_ready(worker)
    status, answer = await post(worker, [reading(bad_device, 0), reading(bad_device, 1),
                                         {"device_id": bad_device, "time": "yesterday",
                                          "metrics": {"t": 1}}])
    assert status == 400 and [e["index"] for e in answer["errors"]] == [2]
    assert "time" in answer["errors"][0]["error"]
    # A later valid body of another device is stored; the refused body's readings never are.
    assert await post(worker, [reading(sentinel)]) == (202, {"accepted": 1})
    await wait_for(lambda: rows_at_least([sentinel], 1), 90, "the sentinel's row")
    assert not await topic_exists(device_topic(bad_device)), "its topic was never even created"
    assert await count_rows([bad_device]) == 0


@pytest.mark.parametrize("body, why", [
    (b"{not json", "not valid JSON"),
    (b'[{"device_id": "caf\xe9"}]', "not valid UTF-8"),
    (b"[]", "empty array"),
])
async def test_a_body_that_is_not_readings_json_gets_400(worker, body, why) -> None:
    status, answer = await post(worker, body)
    assert status == 400 and why in answer["error"]


async def test_a_body_over_1_mib_gets_413(worker) -> None:
    status, answer = await post(worker, b"[" + b" " * ONE_MIB + b"]")
    assert status == 413 and "1 MiB" in answer["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(48):  # 3 MiB, no Content-Length (chunked)
            yield b" " * 65536

    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{worker.web_port}/ingest",
                                data=chunks()) as response:
            assert response.status == 413


async def test_other_methods_get_405(worker) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{worker.web_port}/ingest") as response:
            assert response.status == 405 and "error" in await response.json()


async def test_with_ingest_token_set_only_the_right_bearer_token_gets_in(start_worker) -> None:
    (device,), only = fleet("ingest-auth-", 1)
    worker = start_worker("ingest-auth", DEVICE_FILTER=only, INGEST_TOKEN=TOKEN)
    await web_ready(worker)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, answer = await post(worker, [reading(device)], headers)
        assert status == 401 and "token" in answer["error"], headers
    assert await post(worker, [reading(device)], {"Authorization": f"Bearer {TOKEN}"}) == (
        202, {"accepted": 1})
    await wait_for(lambda: rows_at_least([device], 1), 90, "the authorized reading's row")
    assert TOKEN not in worker.log_text(), "the token is never logged (in any run)"

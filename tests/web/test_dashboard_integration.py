"""/dashboard of a real worker in headless Chromium, under a steady load: the charts fill
with data points, the tiles show readiness, lag in seconds and freshness, and the page logs
no JavaScript error. A screenshot goes to test-output/dashboard.png. With READ_TOKEN set,
the browser opens it with HTTP Basic (the token as password), and the page's own data
requests get through with the credentials the browser keeps."""
from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Iterator

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.stack import OUTPUT, PrivateBroker
from tests.web.worker_web import new_device_topic, produce, reading, wait_for_answer

pytestmark = pytest.mark.integration

READ_TOKEN = "dashboard-read-token-5d1e"
CHARTS = ("throughput", "lag", "lag_seconds", "freshness", "dead_letters", "latency", "db_size")


@pytest.fixture
def chromium() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory(prefix="devicestream-chromium-") as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1400,1200",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # the Debian driver: Selenium Manager must not try to download one
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                                  options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _points(driver: webdriver.Chrome) -> dict[str, int]:
    return driver.execute_script(
        "var out = {};"
        "document.querySelectorAll('svg.chart').forEach(function (svg) {"
        "  out[svg.dataset.chart] = Number(svg.getAttribute('data-points') || 0); });"
        "return out;")


@pytest.mark.parametrize("read_token", ["", READ_TOKEN], ids=["open", "basic-auth"])
async def test_dashboard_charts_fill_with_data(private_broker: PrivateBroker, start_worker,
                                               chromium: webdriver.Chrome,
                                               read_token: str) -> None:
    device, topic = await new_device_topic(private_broker, "webdash-", partitions=2)
    values = [reading(device, i) for i in range(50)] + [b"not json"] * 3
    await produce(private_broker, topic, device.encode(), {0: values[::2], 1: values[1::2]})
    worker = start_worker("web-dashboard", READ_TOKEN=read_token, **private_broker.worker_env())
    await wait_for_answer(worker, "/pipeline/throughput", lambda t: t["dead_letters_total"] == 3,
                          "the messages to be stored")
    await wait_for_answer(worker, "/pipeline/lag", lambda r: r["total_lag"] == 0, "lag 0")

    async def steady_load() -> None:  # about 50 readings a second while the page is watched
        producer = AIOKafkaProducer(bootstrap_servers=private_broker.address)
        await producer.start()
        try:
            for i in range(50, 50 + 50 * 60):
                await producer.send(topic, reading(device, i), key=device.encode(),
                                    partition=i % 2)
                await asyncio.sleep(0.02)
        finally:
            await producer.stop()
    load = asyncio.create_task(steady_load())
    try:
        if read_token:
            assert (await _status(worker.web_port, "/dashboard")) == 401
            assert (await _status(worker.web_port, "/dashboard/data")) == 401
        credentials = f"viewer:{read_token}@" if read_token else ""
        await _watch(chromium, f"http://{credentials}127.0.0.1:{worker.web_port}/dashboard")
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)


async def _status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status


async def _watch(chromium: webdriver.Chrome, url: str) -> None:
    chromium.get(url)
    deadline = time.monotonic() + 30
    while True:  # each refresh (every 3 s) adds one point to each series
        points = _points(chromium)
        if set(points) == set(CHARTS) and all(n >= 3 for n in points.values()):
            break
        assert time.monotonic() < deadline, f"charts did not fill: {points}"
        await asyncio.sleep(0.5)

    OUTPUT.mkdir(exist_ok=True)
    chromium.save_screenshot(str(OUTPUT / "dashboard.png"))
    tiles = chromium.execute_script(
        "return {dead: document.getElementById('t-dead').textContent,"
        "        db: document.getElementById('t-db').textContent,"
        "        ready: document.getElementById('t-ready').textContent,"
        "        lagSeconds: document.getElementById('t-lag-seconds').textContent,"
        "        freshness: document.getElementById('t-freshness').textContent,"
        "        status: document.getElementById('status').textContent};")
    assert tiles["dead"] == "3" and tiles["db"] == "up" and tiles["ready"] == "ready", tiles
    assert tiles["lagSeconds"] != "–" and tiles["freshness"].endswith("s"), tiles
    assert tiles["status"].startswith("updated"), tiles
    series = chromium.execute_script(
        "return Array.from(document.querySelectorAll('svg.chart polyline'))"
        "  .map(function (p) { return p.dataset.series; });")
    assert {"points/s", "this worker", "dead letters total", "p50", "p99",
            "hypertables"} <= set(series)
    errors = [entry for entry in chromium.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors

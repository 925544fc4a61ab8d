"""``DeviceProducer``: the one way devicestream code publishes readings to Kafka.

Readings are checked with the same validator the ingest agent uses, so a bad one is
refused here with a clear error and never sent. The readings of one device are batched
into JSON array messages (by count, size and linger time) on the device's own topic,
keyed by the device id; the topic is created on first use with explicit settings.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from time import monotonic
from typing import Any, Iterable, Mapping

import orjson
from aiokafka import AIOKafkaProducer

from schema.validation import MAX_VALUE_BYTES, Reading, ValidationWindow, validate_reading
from streams.settings import Settings
from streams.topics import TopicProvisioner, device_of_topic, device_topic, kafka_client_kwargs

log = logging.getLogger(__name__)


class InvalidReadingError(ValueError):
    """A reading that the pipeline would dead-letter; it was not sent."""


class DeliveryError(RuntimeError):
    """Some messages could not be delivered; ``failures`` says which and why."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        self.failures = failures
        first_topic, first_error = failures[0]
        super().__init__(
            f"{len(failures)} message(s) not delivered; first: {first_topic}: {first_error!r}"
        )


@dataclass(frozen=True)
class ProducerConfig:
    """Batching, compression and delivery knobs of a DeviceProducer."""

    max_batch_readings: int = 500
    max_message_bytes: int = 512 * 1024
    linger: float = 0.05
    compression: str | None = "snappy"
    max_in_flight: int = 256
    delivery_timeout: float = 60.0
    retention: timedelta = timedelta(days=90)

    def __post_init__(self) -> None:
        if self.compression not in (None, "gzip", "snappy", "lz4", "zstd"):
            raise ValueError(f"unknown compression {self.compression!r}")
        if not 0 < self.max_message_bytes <= MAX_VALUE_BYTES:
            raise ValueError(f"max_message_bytes must be in 1..{MAX_VALUE_BYTES}")


@dataclass
class _DeviceBuffer:
    items: list[bytes] = field(default_factory=list)
    size: int = 0
    since: float = 0.0


def encode_reading(reading: Reading) -> bytes:
    """The JSON of one validated reading, its time in RFC 3339 with microseconds."""
    stamp = reading.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return orjson.dumps({"device_id": reading.device_id, "time": stamp, "metrics": reading.metrics})


class DeviceProducer:
    """Async context manager that validates, batches and publishes readings.

    ``send`` waits when too many messages are in flight (backpressure, never an unbounded
    buffer); ``flush`` waits until everything sent so far is delivered and raises
    ``DeliveryError`` listing what was not.
    """

    def __init__(self, settings: Settings, config: ProducerConfig | None = None) -> None:
        self._settings = settings
        self._config = config or ProducerConfig(retention=timedelta(days=settings.retention_days))
        self._producer = AIOKafkaProducer(
            **kafka_client_kwargs(settings),
            acks="all",
            enable_idempotence=settings.kafka_idempotent_producer,
            compression_type=self._config.compression,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=MAX_VALUE_BYTES + 64 * 1024,
            request_timeout_ms=int(self._config.delivery_timeout * 1000),
        )
        self._topics = TopicProvisioner(settings)
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._in_flight: deque[tuple[str, asyncio.Future[Any]]] = deque()
        self._failures: list[tuple[str, BaseException]] = []
        self._linger_task: asyncio.Task[None] | None = None
        self.readings_sent = 0
        self.messages_sent = 0

    async def __aenter__(self) -> "DeviceProducer":
        await self._topics.__aenter__()
        await self._producer.start()
        self._linger_task = asyncio.create_task(self._flush_lingering())
        return self

    async def __aexit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            if self._linger_task:
                self._linger_task.cancel()
            if exc_type is None:
                await self.flush()
        finally:
            await self._producer.stop()
            await self._topics.__aexit__(exc_type, *rest)

    async def send(self, device_id: str, time: datetime | int | str, metrics: Mapping[str, Any]) -> None:
        """Queue one reading; raises InvalidReadingError for a reading the pipeline would refuse."""
        if isinstance(time, datetime):
            if time.tzinfo is None:
                raise InvalidReadingError("time: a datetime needs a time zone")
            time = time.isoformat()
        await self._add({"device_id": device_id, "time": time, "metrics": dict(metrics)})

    async def send_many(self, readings: Iterable[Mapping[str, Any]]) -> None:
        """Queue readings given as dicts in the message format (device_id, time, metrics)."""
        for reading in readings:
            await self._add(reading)

    async def _add(self, obj: Mapping[str, Any]) -> None:
        device_id = obj.get("device_id") if isinstance(obj, Mapping) else None
        topic = device_topic(device_id) if isinstance(device_id, str) else None
        result = validate_reading(obj, device_id if topic else None, self._window())
        if isinstance(result, str):
            raise InvalidReadingError(result)
        if topic is None:
            raise InvalidReadingError("device_id: missing")
        encoded = encode_reading(result)
        buffer = self._buffers.get(topic)
        if buffer is None:
            await self._topics.ensure([topic])
            buffer = self._buffers[topic] = _DeviceBuffer()
        if buffer.items and buffer.size + len(encoded) + 2 > self._config.max_message_bytes:
            await self._publish(topic)
            buffer = self._buffers[topic] = _DeviceBuffer()
        if not buffer.items:
            buffer.since = monotonic()
        buffer.items.append(encoded)
        buffer.size += len(encoded) + 1
        if len(buffer.items) >= self._config.max_batch_readings:
            await self._publish(topic)

    def _window(self) -> ValidationWindow:
        return ValidationWindow.around(datetime.now(timezone.utc), self._config.retention)

    async def _publish(self, topic: str) -> None:
        buffer = self._buffers.pop(topic, None)
        if buffer is None or not buffer.items:
            return
        items = buffer.items
        value = items[0] if len(items) == 1 else b"[" + b",".join(items) + b"]"
        key = str(device_of_topic(topic)).encode()
        while len(self._in_flight) >= self._config.max_in_flight:
            await self._settle_oldest()
        future = await self._producer.send(topic, value=value, key=key)
        self._in_flight.append((topic, future))
        self.readings_sent += len(items)
        self.messages_sent += 1

    async def _settle_oldest(self) -> None:
        topic, future = self._in_flight.popleft()
        try:
            await future
        except Exception as exc:
            log.error("delivery to %s failed: %r", topic, exc)
            self._failures.append((topic, exc))

    async def _flush_lingering(self) -> None:
        while True:
            await asyncio.sleep(self._config.linger / 2)
            cutoff = monotonic() - self._config.linger
            for topic in [t for t, b in self._buffers.items() if b.since <= cutoff]:
                await self._publish(topic)

    async def flush(self) -> None:
        """Publish every buffered reading and wait for the broker to acknowledge all."""
        for topic in list(self._buffers):
            await self._publish(topic)
        while self._in_flight:
            await self._settle_oldest()
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(failures)

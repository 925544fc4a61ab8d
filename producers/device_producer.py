"""``DeviceProducer``: the one way devicestream code publishes readings to Kafka.

Used by gateways and backends (import it), by the simulator and by ``POST /ingest``::

    async with DeviceProducer(settings) as producer:
        await producer.send("sensor-001", datetime.now(timezone.utc), {"temperature": 21.4})
        await producer.send_many(readings)      # dicts in the message format
        await producer.flush()                  # waits for the broker; DeliveryError lists failures

What it guarantees:

* **Validation**: every reading is checked with the validator the ingest agent uses
  (``schema.validation.validate_reading``). A reading the pipeline would dead-letter is
  refused here with ``InvalidReadingError`` and never sent; ``send_many`` checks all its
  readings before queueing any, so a call either queues all of them or none.
* **Topics**: ``TOPIC_MODE=per-device`` publishes to ``device-data-{device_id}``,
  ``shared`` to ``device-data``; the key is always the device id. ``both`` (the workers'
  mode while a deployment moves to shared) is refused when the producer is created, with a
  ``ConfigError`` saying to set one of the two. The topic is created on
  first use by ``streams.topics.TopicProvisioner`` (the implementation the worker uses); an
  invalid device id is refused before anything reaches the broker.
* **Batching**: the readings of one device are gathered into one JSON array message until it
  holds ``max_batch_readings`` readings or ``max_message_bytes`` bytes, or its oldest reading
  has waited ``linger`` seconds. Messages are compressed (snappy by default; lz4, zstd, gzip or
  none).
* **Backpressure**: readings buffered or sent but not yet acknowledged take at most
  ``buffer_bytes``; past that, ``send`` waits for the broker (it never buffers without limit).
* **Bounded delivery**: a message the broker has not acknowledged ``delivery_timeout``
  seconds after it was handed to the Kafka client (retries included) is a failure.
  ``flush()`` waits until every message is acknowledged or failed and raises
  ``DeliveryError`` listing each failure (device, topic, readings, reason). A failed message
  may still arrive later (the client can keep retrying it): sending it again is safe, the
  database stores a (device, metric, time) once.
* **Idempotent producing** (``KAFKA_IDEMPOTENT_PRODUCER``) is a setting: on for real Kafka
  (no duplicates from the client's own retries), off for the local Tansu broker, which
  refuses it.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from time import monotonic
from typing import Any, Iterable, Mapping

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from schema.validation import MAX_VALUE_BYTES, Reading, ValidationWindow, validate_reading
from streams.settings import Settings
from streams.topics import (
    InvalidDeviceId,
    TopicProvisioner,
    kafka_client_kwargs,
    publishing_mode,
    topic_for,
)

log = logging.getLogger(__name__)

# Room for the record batch headers around one message of up to 1 MiB.
_REQUEST_OVERHEAD = 64 * 1024


class InvalidReadingError(ValueError):
    """Readings the pipeline would dead-letter; none of the call's readings was queued.

    ``errors`` lists ``(index, reason)`` for each invalid reading (index 0 for ``send``).
    """

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        index, error = errors[0]
        if len(errors) == 1:
            text = f"invalid reading (index {index}): {error}"
        else:
            text = (f"{len(errors)} invalid readings, nothing queued; first (index {index}): "
                    f"{error}")
        super().__init__(text)


class BrokerUnavailable(ConnectionError):
    """No Kafka broker could be reached within the delivery timeout."""


class ProducerStartError(RuntimeError):
    """The broker refused to start the producer (e.g. idempotence it does not support)."""


class DeliveryTimeout(TimeoutError):
    """The broker did not acknowledge a message in time (retries included)."""


@dataclass(frozen=True)
class Failure:
    """One message the broker did not acknowledge."""

    device_id: str
    topic: str
    readings: int
    error: BaseException

    def __str__(self) -> str:
        return (f"{self.readings} reading(s) of {self.device_id} to {self.topic}: "
                f"{_describe(self.error)}")


class DeliveryError(RuntimeError):
    """Some messages were not delivered; ``failures`` lists each one and why."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        readings = sum(f.readings for f in failures)
        super().__init__(
            f"{len(failures)} message(s) with {readings} reading(s) not delivered; "
            f"first: {failures[0]}"
        )


def _describe(error: BaseException) -> str:
    name, text = type(error).__name__, str(error)
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


@dataclass(frozen=True)
class ProducerConfig:
    """Batching, compression, buffering and delivery knobs of a DeviceProducer.

    ``from_settings`` reads them from the ``PRODUCER_*`` settings; the topic mode and
    idempotence always come from the settings (they are properties of the deployment).
    """

    max_batch_readings: int = 500
    max_message_bytes: int = 512 * 1024
    linger: float = 0.05
    compression: str | None = "snappy"
    buffer_bytes: int = 32 * 1024 * 1024
    delivery_timeout: float = 30.0
    retry_backoff: float = 0.1

    def __post_init__(self) -> None:
        if self.compression not in (None, "gzip", "snappy", "lz4", "zstd"):
            raise ValueError(f"unknown compression {self.compression!r}")
        if not 0 < self.max_message_bytes <= MAX_VALUE_BYTES:
            raise ValueError(f"max_message_bytes must be in 1..{MAX_VALUE_BYTES}")
        if self.max_batch_readings < 1:
            raise ValueError("max_batch_readings must be >= 1")
        if self.buffer_bytes < 1 or self.linger < 0 or self.delivery_timeout <= 0:
            raise ValueError("buffer_bytes and delivery_timeout must be > 0, linger >= 0")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "ProducerConfig":
        values: dict[str, Any] = {
            "max_message_bytes": settings.producer.batch_bytes,
            "linger": settings.producer.linger,
            "compression": settings.producer.compression.codec,
            "buffer_bytes": settings.producer.buffer_bytes,
            "delivery_timeout": settings.producer.delivery_timeout,
        }
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown ProducerConfig fields: {', '.join(sorted(unknown))}")
        return cls(**values)


def encode_reading(reading: Reading) -> bytes:
    """The JSON of one validated reading, its time in RFC 3339 UTC (``Z``), microseconds kept.

    orjson formats the datetime in C; strftime would be most of the producer's time.
    """
    return orjson.dumps(
        {"device_id": reading.device_id, "time": reading.time, "metrics": reading.metrics},
        option=orjson.OPT_UTC_Z,
    )


@dataclass(eq=False, slots=True)
class _Message:
    """The readings of one device gathered into one message, then its delivery."""

    device_id: str
    topic: str
    items: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes counted against buffer_bytes
    since: float = 0.0  # when the first reading was added
    unwaited: bool = False  # holds readings of a caller that will learn of failures by flush()
    deadline: float = 0.0  # when it fails if still unacknowledged (set when published)
    done: asyncio.Future | None = None  # set when published; result: Failure or None
    released: bool = False

    def value(self) -> bytes:
        items = self.items
        return items[0] if len(items) == 1 else b"[" + b",".join(items) + b"]"

    @property
    def delivery(self) -> asyncio.Future:
        """``done`` of a message already published."""
        if self.done is None:
            raise RuntimeError(f"the message of {self.device_id} is not published yet")
        return self.done


class DeviceProducer:
    """Async context manager that validates, batches and publishes readings.

    ``start()``/``stop()`` do what entering and leaving the context do, for long-lived
    producers (the worker's ``POST /ingest`` keeps one).
    """

    def __init__(self, settings: Settings, config: ProducerConfig | None = None) -> None:
        self._settings = settings
        self._config = config or ProducerConfig.from_settings(settings)
        self._retention = timedelta(days=settings.storage.retention_days)
        self._mode = publishing_mode(settings.topics.mode)  # ConfigError for both: a worker mode
        self._producer = self._new_kafka_producer()  # fails now on an unusable codec
        self._kafka_stopped = False
        self._topics: TopicProvisioner | None = None
        self._tracked: set[str] = set()  # topics whose metadata the Kafka client has
        self._buffers: dict[str, _Message] = {}  # device id -> message being filled
        self._unsettled: set[_Message] = set()
        self._deadlines: deque[_Message] = deque()  # published messages, in publish order
        # One context for every acknowledgement callback: the Kafka client's futures would
        # otherwise copy the current one per message (an object per message for the GC).
        self._callback_context = contextvars.copy_context()
        self._failures: list[Failure] = []
        self._held = 0  # bytes buffered or sent and not yet released by the Kafka client
        self._space = asyncio.Event()
        self._lock = asyncio.Lock()
        self._linger_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.readings_delivered = 0  # acknowledged by the broker

    # --- lifecycle ---------------------------------------------------------------------

    def _new_kafka_producer(self) -> AIOKafkaProducer:
        config = self._config
        return AIOKafkaProducer(
            **kafka_client_kwargs(self._settings),
            acks="all",
            enable_idempotence=self._settings.producer.idempotent,
            compression_type=config.compression,
            linger_ms=5,
            max_batch_size=MAX_VALUE_BYTES + _REQUEST_OVERHEAD,
            max_request_size=MAX_VALUE_BYTES + _REQUEST_OVERHEAD,
            request_timeout_ms=int(config.delivery_timeout * 1000),
            retry_backoff_ms=int(config.retry_backoff * 1000),
        )

    @property
    def config(self) -> ProducerConfig:
        return self._config

    @property
    def buffered_bytes(self) -> int:
        """Bytes of readings buffered or in flight (never much above ``buffer_bytes``)."""
        return self._held

    async def start(self) -> None:
        """Connect; retries until ``delivery_timeout``, then raises BrokerUnavailable."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("this DeviceProducer was stopped; create a new one")
        timeout = self._config.delivery_timeout
        started = monotonic()
        backoff = min(0.2, timeout / 4)
        attempt = 0
        while True:
            attempt += 1
            if self._kafka_stopped:  # a failed attempt (this call's or an earlier one's)
                self._producer = self._new_kafka_producer()
                self._kafka_stopped = False
            topics = TopicProvisioner(self._settings)
            try:
                await topics.__aenter__()
                try:
                    await self._producer.start()
                except BaseException:
                    await topics.__aexit__(None, None, None)
                    raise
                self._topics = topics
                break
            except KafkaConnectionError as exc:
                await self._producer.stop()
                self._kafka_stopped = True
                elapsed = monotonic() - started
                if elapsed + backoff >= timeout:
                    raise BrokerUnavailable(
                        f"no Kafka broker reachable at {self._settings.kafka.brokers} after "
                        f"{attempt} attempt(s) in {elapsed:.1f}s: {_describe(exc)}"
                    ) from exc
                log.warning("Kafka not reachable at %s (attempt %d): %s; retrying",
                            self._settings.kafka.brokers, attempt, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except BaseException as exc:
                await self._producer.stop()
                self._kafka_stopped = True
                if self._settings.producer.idempotent and isinstance(exc, KafkaError):
                    raise ProducerStartError(
                        f"the broker at {self._settings.kafka.brokers} refused to start an "
                        f"idempotent producer ({_describe(exc)}); set "
                        f"KAFKA_IDEMPOTENT_PRODUCER=false for brokers without idempotent "
                        f"producing (the local Tansu broker)"
                    ) from exc
                raise
        self._started = True
        self._linger_task = asyncio.create_task(self._flush_lingering(), name="producer-linger")
        self._expiry_task = asyncio.create_task(self._watch_deadlines(), name="producer-expiry")

    async def stop(self) -> list[Failure]:
        """Publish what is buffered, wait (bounded) for acknowledgements, disconnect.

        Returns the failures not yet reported by ``flush`` (also logged).
        """
        if self._closed:
            return []
        self._closed = True
        if self._linger_task is not None:
            self._linger_task.cancel()
        failures: list[Failure] = []
        if self._started:
            try:
                await self._publish_buffered_before_stop()
                await self._wait_settled()
            finally:
                failures, self._failures = self._failures, []
                for failure in failures:
                    log.error("not delivered: %s", failure)
                if self._expiry_task is not None:
                    self._expiry_task.cancel()
                await self._stop_kafka_client()
                if self._topics is not None:
                    await self._topics.__aexit__(None, None, None)
        elif not self._kafka_stopped:
            await self._producer.stop()  # never started: only releases the client object
            self._kafka_stopped = True
        return failures

    async def _publish_buffered_before_stop(self) -> None:
        # A send() waiting for buffer space holds the lock; wait for it at most as long as
        # a delivery may take, then report what is still buffered instead of hanging.
        try:
            await asyncio.wait_for(self._lock.acquire(), self._config.delivery_timeout)
        except asyncio.TimeoutError:
            for message in list(self._buffers.values()):
                self._failures.append(Failure(
                    message.device_id, message.topic, len(message.items),
                    DeliveryTimeout("not published: the producer stopped while the broker "
                                    "was not acknowledging (buffer full)")))
            self._buffers.clear()
            return
        try:
            await self._publish_all()
        finally:
            self._lock.release()

    async def _stop_kafka_client(self) -> None:
        # aiokafka's stop() waits for every batch it holds; with idempotence on it retries
        # them forever. Everything was reported failed by now: give it a bounded time.
        stopping = asyncio.ensure_future(self._producer.stop())
        done, _ = await asyncio.wait([stopping], timeout=min(self._config.delivery_timeout, 5.0))
        if not done:
            sender = getattr(getattr(self._producer, "_sender", None), "sender_task", None)
            if sender is not None:
                sender.cancel()  # stop() then closes the connections
            try:
                await asyncio.wait_for(stopping, 5.0)
            except Exception as exc:  # nothing left to deliver: just log
                log.warning("Kafka producer did not stop cleanly: %s", _describe(exc))

    async def __aenter__(self) -> "DeviceProducer":
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, *rest: Any) -> None:
        failures = await self.stop()
        if exc_type is None and failures:
            raise DeliveryError(failures)

    # --- sending -----------------------------------------------------------------------

    async def send(
        self, device_id: str, time: datetime | int | str, metrics: Mapping[str, Any],
        *, wait: bool = False,
    ) -> None:
        """Queue one reading (``wait=True``: and wait until the broker has it).

        Raises InvalidReadingError for a reading the pipeline would refuse (nothing sent).
        """
        if isinstance(time, datetime):
            if time.tzinfo is None:
                raise InvalidReadingError([(0, "time: a datetime needs a time zone")])
            time = time.isoformat()
        if isinstance(metrics, Mapping):
            metrics = dict(metrics)
        await self.send_many(
            [{"device_id": device_id, "time": time, "metrics": metrics}], wait=wait)

    async def send_many(
        self, readings: Iterable[Mapping[str, Any] | Reading], *, wait: bool = False
    ) -> int:
        """Queue readings; return how many. All are validated first: one invalid reading
        raises InvalidReadingError (listing each invalid one) and none is queued.

        ``readings``: dicts in the message format (device_id, time, metrics), or
        ``Reading`` objects from ``schema.validation`` (already validated; their time is
        checked again). ``wait=True`` publishes them now (no linger) and returns once the
        broker acknowledged every one of them; DeliveryError lists those it did not (those
        failures are not reported again by ``flush``).
        """
        valid = self._validate(readings)
        if not valid:
            return 0
        if not self._started:
            raise RuntimeError("DeviceProducer not started: use `async with` or start()")
        if self._closed:
            raise RuntimeError("DeviceProducer is stopped")
        async with self._lock:
            await self._provision({topic for _, topic, _ in valid})
            touched: dict[int, _Message] = {}
            for device_id, topic, encoded in valid:
                message = await self._append(device_id, topic, encoded, unwaited=not wait)
                touched[id(message)] = message
            if wait or self._config.linger == 0:
                for message in touched.values():
                    if message.done is None:
                        await self._publish(message)
        if wait:
            results = await asyncio.gather(*(m.delivery for m in touched.values()))
            failures = [r for r in results if r is not None]
            if failures:
                raise DeliveryError(failures)
        return len(valid)

    async def prepare(self, device_ids: Iterable[str]) -> None:
        """Create the topics of ``device_ids`` and learn their partitions now, in one request
        for all of them; InvalidDeviceId for an invalid id (nothing is created).

        Worth it before sending to many devices one message at a time (at a steady rate,
        say): each device's first send would otherwise wait for metadata requests of its own
        (see ``_provision``).
        """
        if not self._started:
            raise RuntimeError("DeviceProducer not started: use `async with` or start()")
        topics = {topic_for(device_id, self._mode) for device_id in device_ids}
        async with self._lock:
            await self._provision(topics)

    async def flush(self) -> None:
        """Publish every buffered reading, wait until the broker acknowledged or failed each
        message, and raise DeliveryError listing every failure since the last flush."""
        if self._started and not self._closed:
            async with self._lock:
                await self._publish_all()
        await self._wait_settled()
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(failures)

    # --- internals ---------------------------------------------------------------------

    def _validate(
        self, readings: Iterable[Mapping[str, Any] | Reading]
    ) -> list[tuple[str, str, bytes]]:
        window = ValidationWindow.around(datetime.now(timezone.utc), self._retention)
        valid: list[tuple[str, str, bytes]] = []
        errors: list[tuple[int, str]] = []
        for index, obj in enumerate(readings):
            if isinstance(obj, Reading):
                result: Reading | str = obj
                if not window.oldest_us <= obj.time_us <= window.newest_us:
                    result = "time: outside the accepted range (older than the retention " \
                             "period or more than 5 minutes in the future)"
            else:
                result = validate_reading(obj, None, window)
            if isinstance(result, str):
                errors.append((index, result))
                continue
            try:
                topic = topic_for(result.device_id, self._mode)
            except InvalidDeviceId as exc:
                errors.append((index, f"device_id: {exc}"))
                continue
            valid.append((result.device_id, topic, encode_reading(result)))
        if errors:
            raise InvalidReadingError(errors)
        return valid

    async def _provision(self, topics: set[str]) -> None:
        """Create missing topics and learn all new ones' partitions in one metadata request.

        Left to itself the Kafka client asks for metadata on each new topic's first send,
        every time for all the topics it tracks: quadratic in new topics
        (docs/performance.md#what-profiling-found-and-fixed).
        """
        assert self._topics is not None
        await self._topics.ensure(sorted(topics))
        new = topics - self._tracked
        if new:
            client = self._producer.client
            await asyncio.gather(*[client.add_topic(topic) for topic in new])
            self._tracked |= new

    async def _append(
        self, device_id: str, topic: str, encoded: bytes, *, unwaited: bool
    ) -> _Message:
        size = len(encoded) + 1
        await self._reserve(size)
        config = self._config
        message = self._buffers.get(device_id)
        if message is not None and message.size + size + 1 > config.max_message_bytes:
            await self._publish(message)
            message = None
        if message is None:
            message = self._buffers[device_id] = _Message(device_id, topic, since=monotonic())
        message.items.append(encoded)
        message.size += size
        message.unwaited |= unwaited
        self._held += size
        if len(message.items) >= config.max_batch_readings:
            await self._publish(message)
        return message

    async def _reserve(self, size: int) -> None:
        """Wait until ``size`` more bytes fit in ``buffer_bytes`` (backpressure)."""
        while self._held and self._held + size > self._config.buffer_bytes:
            if self._buffers:
                await self._publish_all()  # what is buffered must go out to free space
                continue
            self._space.clear()
            await self._space.wait()

    async def _publish_all(self) -> None:
        for message in list(self._buffers.values()):
            await self._publish(message)
        self._shrink_emptied()

    def _shrink_emptied(self) -> None:
        """Give back the table of ``_buffers`` and ``_unsettled`` once they are empty.

        A dict or set keeps the table of its largest size when its entries are deleted. In
        shared mode a burst to many devices buffers a message per device (up to
        ``buffer_bytes``): without this, a producer that went quiet after a burst to a
        million devices would keep a slot per message of that burst.
        """
        if not self._buffers:
            self._buffers.clear()  # clear() frees the table; deleting entries does not
        if not self._unsettled:
            self._unsettled.clear()

    async def _publish(self, message: _Message) -> None:
        """Hand one message to the Kafka client (with the lock held)."""
        if self._buffers.get(message.device_id) is message:
            del self._buffers[message.device_id]
        loop = asyncio.get_running_loop()
        message.done = loop.create_future()
        self._unsettled.add(message)
        message.deadline = monotonic() + self._config.delivery_timeout
        self._deadlines.append(message)
        try:
            future = await self._producer.send(
                message.topic, value=message.value(), key=message.device_id.encode())
        except Exception as exc:
            self._settle(message, exc)
            self._release(message)
            return
        future.add_done_callback(functools.partial(self._acknowledged, message),
                                 context=self._callback_context)

    def _acknowledged(self, message: _Message, future: asyncio.Future) -> None:
        if future.cancelled():
            error: BaseException | None = KafkaError("delivery cancelled (producer stopped)")
        else:
            error = future.exception()
        self._settle(message, error)
        self._release(message)

    def _settle(self, message: _Message, error: BaseException | None) -> None:
        """Record the outcome of a message once (acknowledgement, error or deadline)."""
        done = message.done
        if done is None or done.done():
            return
        self._unsettled.discard(message)
        if error is None:
            self.readings_delivered += len(message.items)
            done.set_result(None)
            return
        failure = Failure(message.device_id, message.topic, len(message.items), error)
        if message.unwaited:
            self._failures.append(failure)
        log.warning("not delivered: %s", failure)
        done.set_result(failure)

    def _release(self, message: _Message) -> None:
        """The Kafka client no longer holds the message: its bytes count no more."""
        if not message.released:
            message.released = True
            self._held -= message.size
            self._space.set()

    async def _wait_settled(self) -> None:
        """Wait until every published message is acknowledged or past its deadline.

        Does not count on the watcher task: a closing event loop cancels every task, and
        a stop awaited then must still end.
        """
        while self._unsettled:
            latest = max(m.deadline for m in self._unsettled)
            await asyncio.wait([m.done for m in self._unsettled if m.done is not None],
                               timeout=max(latest - monotonic(), 0.0) + 0.01)
            self._expire_overdue(monotonic())
        self._expire_overdue(monotonic())  # forget the settled ones now, not at the next tick
        self._shrink_emptied()

    def _expire_overdue(self, now: float) -> None:
        """Fail each message the broker has not acknowledged by its deadline."""
        deadlines = self._deadlines
        while deadlines and (deadlines[0].deadline <= now or deadlines[0].delivery.done()):
            message = deadlines.popleft()
            if message.deadline <= now:
                self._settle(message, DeliveryTimeout(
                    f"not acknowledged by the broker within {self._config.delivery_timeout:g}s "
                    f"(PRODUCER_DELIVERY_TIMEOUT; retries included)"))

    async def _watch_deadlines(self) -> None:
        """Expire overdue messages as time passes.

        One task instead of a timer per message: the event loop keeps timers in a heap
        ordered by Python-level comparisons, and one timer per one-reading message would
        be the producer's largest single cost.
        """
        tick = min(self._config.delivery_timeout / 10, 0.5)
        while True:
            await asyncio.sleep(tick)
            self._expire_overdue(monotonic())

    async def _flush_lingering(self) -> None:
        linger = self._config.linger
        tick = max(linger / 2, 0.005)
        while True:
            await asyncio.sleep(tick)
            if not self._buffers:
                continue
            cutoff = monotonic() - linger
            oldest = next(iter(self._buffers.values()))
            if oldest.since > cutoff:
                continue
            try:
                async with self._lock:
                    # Buffers are in creation order: publish the old ones from the front.
                    for message in list(self._buffers.values()):
                        if message.since > cutoff:
                            break
                        await self._publish(message)
                    self._shrink_emptied()
            except Exception as exc:  # never dies: the next round tries again
                log.warning("publishing lingering readings failed: %s", _describe(exc))

"""``POST /ingest``: readings over HTTP, published to Kafka (the Device -> API -> Kafka path).

The body is one reading or a JSON array of readings in the message format of CONTRACT.md
(an array may mix devices). The answer:

* ``202 {"accepted": n}`` once the broker has acknowledged all ``n`` readings;
* ``400 {"errors": [{"index": i, "error": "..."}, ...]}`` when any reading is invalid (a
  single reading has index 0); nothing of that body is published. At most
  ``MAX_LISTED_ERRORS`` are listed; ``errors_total`` then gives the count;
* ``400 {"error": "..."}`` for a body that is not UTF-8, not JSON, empty, or neither an
  object nor an array;
* ``401`` when ``INGEST_TOKEN`` or ``DEVICE_TOKEN_SECRET`` is set and the request has no
  ``Authorization: Bearer`` with the gateway token or a device token (``web.credentials``:
  compared in constant time, never logged, checked before the body is read);
* ``403`` when a device token's body holds a reading of another device: nothing of that
  body is published;
* ``413`` for a body over 1 MiB, found while reading it: at most 1 MiB + 1 byte is held;
* ``503`` when Kafka is unreachable or does not acknowledge in time
  (``PRODUCER_DELIVERY_TIMEOUT``); sending the same body again is safe, the database stores
  a (device, metric, time) once.

Every error is JSON ``{"error": ...}`` (or the errors list above), never a stack trace.
Readings are validated by ``schema.validation`` (what the ingest agent runs) and published
by the worker's one ``DeviceProducer``, started on the first request and stopped with the
worker.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import mode
import orjson
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

from producers.device_producer import (
    BrokerUnavailable,
    DeliveryError,
    DeviceProducer,
    InvalidReadingError,
    ProducerStartError,
)
from schema.validation import (
    MAX_VALUE_BYTES,
    InvalidReading,
    Reading,
    ValidationWindow,
    validate_message,
)
from streams.settings import Settings, TopicMode
from web.credentials import REALM, Caller, IngestCredentials

log = logging.getLogger(__name__)

MAX_BODY_BYTES = MAX_VALUE_BYTES  # 1 MiB, like one Kafka message
READ_CHUNK_BYTES = 64 * 1024
MAX_LISTED_ERRORS = 1000
RETRY_AFTER_SECONDS = "5"


@dataclass
class Answer:
    """Status, JSON body and extra headers of a response."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, **headers: str) -> Answer:
    return Answer(status, {"error": message}, dict(headers))


class BodyTooLarge(Exception):
    pass


async def read_capped(content: Any, declared_length: int | None, limit: int) -> bytes:
    """The request body, read from the stream ``content`` in chunks.

    Raises BodyTooLarge as soon as the declared length, or the bytes read, pass ``limit``:
    never more than ``limit + 1`` bytes are held.
    """
    if declared_length is not None and declared_length > limit:
        raise BodyTooLarge()
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await content.read(min(READ_CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        parts.append(chunk)


def parse_body(body: bytes, window: ValidationWindow) -> list[Reading] | Answer:
    """The body's readings when every one is valid; otherwise the 400 answer."""
    if not body:
        return error(400, "empty body: send one reading or a JSON array of readings")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error(400, f"body is not valid UTF-8 (byte {exc.start})")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error(400, f"body is not valid JSON: {str(exc)[:160]}")
    if isinstance(doc, list):
        if not doc:
            return error(400, "empty array: send at least one reading")
    elif not isinstance(doc, dict):
        kind = "null" if doc is None else type(doc).__name__.replace("str", "string")
        return error(400, f"body must be a reading object or an array of readings, got {kind}")
    readings, invalid = validate_message(body, None, window)
    if not invalid:
        return readings

    def position(bad: InvalidReading) -> int:
        return 0 if bad.index is None else bad.index

    return invalid_readings([{"index": position(bad), "error": bad.error}
                             for bad in sorted(invalid, key=position)])


def invalid_readings(errors: list[dict[str, Any]]) -> Answer:
    body: dict[str, Any] = {"errors": errors[:MAX_LISTED_ERRORS]}
    if len(errors) > MAX_LISTED_ERRORS:
        body["errors_total"] = len(errors)
    return Answer(400, body)


def foreign_readings(caller: Caller, readings: list[Reading]) -> Answer | None:
    """The 403 answer when a device's token carries readings of other devices, else None."""
    if caller.device_id is None:
        return None
    foreign = [i for i, r in enumerate(readings) if r.device_id != caller.device_id]
    if not foreign:
        return None
    log.warning("POST /ingest: 403, the token of device %s sent %d reading(s) of other "
                "devices (first: %s)", caller.device_id, len(foreign),
                readings[foreign[0]].device_id)
    return error(403, f"this token admits only readings of device {caller.device_id!r}: "
                      f"{len(foreign)} reading(s) of other devices, indexes "
                      f"{foreign[:MAX_LISTED_ERRORS]}; nothing of this body was published")


class IngestPublisher:
    """The worker's one long-lived DeviceProducer: started on first use, stopped once.

    A failed start is not remembered: the next request tries again. A worker in
    ``TOPIC_MODE=both`` (moving from per-device topics to shared) publishes to the shared
    topic, where the move goes: the workers in both mode read it, and once every producer
    publishes there the device topics drain (docs/architecture.md, topic modes).
    """

    def __init__(self, settings: Settings,
                 factory: Callable[[Settings], DeviceProducer] = DeviceProducer) -> None:
        if settings.topics.mode is TopicMode.BOTH:
            settings = replace(settings, topics=replace(settings.topics, mode=TopicMode.SHARED))
        self._settings = settings
        self._factory = factory
        self._producer: DeviceProducer | None = None
        self._lock = asyncio.Lock()
        self.closed = False

    async def get(self) -> DeviceProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self.closed:
                raise RuntimeError("the worker is stopping")
            if self._producer is None:
                producer = self._factory(self._settings)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
                log.info("POST /ingest: producer connected to %s", self._settings.kafka.brokers)
        return self._producer

    async def close(self) -> None:
        async with self._lock:
            self.closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            failures = await producer.stop()
            log.info("POST /ingest: producer stopped (%d undelivered message(s))", len(failures))


class IngestHandler:
    """Everything ``POST /ingest`` does, apart from the web framework."""

    def __init__(self, settings: Settings, publisher: IngestPublisher) -> None:
        self._settings = settings
        self._publisher = publisher
        self._credentials = IngestCredentials.from_settings(settings)
        self._retention = timedelta(days=settings.storage.retention_days)

    async def handle(self, request: Any) -> Answer:
        header = request.headers.get("Authorization")
        caller = self._credentials.caller(header)
        if caller is None:
            # what the token claims is not logged: a mistyped secret would leak in part
            log.warning("POST /ingest: 401, %s",
                        "no bearer token" if header is None else "token not accepted")
            return error(401, "missing or wrong bearer token (Authorization: Bearer <token>: "
                              "the gateway token or the device's own token)",
                         **{"WWW-Authenticate": f'Bearer realm="{REALM}"'})
        try:
            body = await read_capped(request.content, request.content_length, MAX_BODY_BYTES)
        except BodyTooLarge:
            return error(413, f"body over 1 MiB ({MAX_BODY_BYTES} bytes)")
        window = ValidationWindow.around(datetime.now(timezone.utc), self._retention)
        parsed = parse_body(body, window)
        if isinstance(parsed, Answer):
            return parsed
        refused = foreign_readings(caller, parsed)
        if refused is not None:
            return refused
        return await self._publish(parsed)

    async def _publish(self, readings: list[Reading]) -> Answer:
        if self._publisher.closed:
            return error(503, "the worker is stopping", **{"Retry-After": RETRY_AFTER_SECONDS})
        try:
            producer = await self._publisher.get()
            accepted = await producer.send_many(readings, wait=True)
        except InvalidReadingError as exc:  # a reading aged out of the window meanwhile
            return invalid_readings([{"index": i, "error": e} for i, e in exc.errors])
        except DeliveryError as exc:
            log.warning("POST /ingest: %s", exc)
            return error(
                503,
                f"the broker did not acknowledge {sum(f.readings for f in exc.failures)} of "
                f"{len(readings)} reading(s): {exc.failures[0]}; sending the same body again "
                f"is safe",
                **{"Retry-After": RETRY_AFTER_SECONDS},
            )
        except (BrokerUnavailable, ProducerStartError, KafkaError) as exc:
            log.warning("POST /ingest: Kafka unavailable: %s", exc)
            return error(503, f"Kafka is unavailable: {exc}",
                         **{"Retry-After": RETRY_AFTER_SECONDS})
        except RuntimeError:
            if self._publisher.closed:
                return error(503, "the worker is stopping", **{"Retry-After": RETRY_AFTER_SECONDS})
            raise
        return Answer(202, {"accepted": accepted})


# --- Faust wiring -------------------------------------------------------------------------

from streams.application import app, settings  # noqa: E402

publisher = IngestPublisher(settings)
handler = IngestHandler(settings, publisher)


@app.service
class IngestProducerOwner(mode.Service):
    """Stops the ingest producer when the worker stops."""

    async def on_stop(self) -> None:
        await publisher.close()


@app.page("/ingest")
class Ingest(View):
    """POST readings; see the module docstring for the answers (failures: ``web.errors``)."""

    async def post(self, request: Request) -> Response:
        answer = await handler.handle(request)
        return self.json(answer.body, status=answer.status, headers=answer.headers or None)

    async def _only_post(self, request: Request, **kwargs: Any) -> Response:
        return self.json({"error": f"{request.method} not allowed here; use POST"},
                         status=405, headers={"Allow": "POST"})

    get = put = patch = delete = _only_post

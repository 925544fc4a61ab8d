"""Kafka topic names and their provisioning, shared by workers and producers.

Two layouts (``TOPIC_MODE``):

* ``per-device`` (default, the design's): each device publishes to its own topic
  ``device-data-{device_id}``;
* ``shared``: every device publishes to the one topic ``device-data``, keyed by its id;

and ``both``, a worker mode only, while a deployment moves from the first to the second: the
workers read both layouts, producers publish to one (``topic_for`` refuses ``both``).

Invalid readings go to ``device-data.dlq`` in both. Neither ``device-data`` nor
``device-data.dlq`` is ever taken for a device topic: a device topic is the prefix
``device-data-`` (with the dash) followed by a valid device id.

Topics are created with explicit partitions and configs (the broker's auto-creation would
pick its own partition count, and Tansu's DescribeConfigs only returns configs given at
creation), idempotently, by one implementation: ``TopicProvisioner``.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Iterable, NotRequired, TypedDict

import faust
import faust.types.auth
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context

from schema.validation import DEVICE_ID_PATTERN
from streams.settings import ConfigError, Settings, TopicMode

DEVICE_TOPIC_PREFIX = "device-data-"
SHARED_TOPIC = "device-data"
DEAD_LETTER_TOPIC = "device-data.dlq"

# Configs every topic we create gets. 7 days like the production broker's default; the
# producer compresses (snappy by default) and the broker keeps the producer's batches.
RETENTION_MS = 7 * 24 * 3600 * 1000
# A reading may be 1 MiB; its dead letter wraps it in JSON, so records up to 2 MiB.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024

log = logging.getLogger(__name__)


class InvalidDeviceId(ValueError):
    """A device id that is not a valid topic suffix (and so never reaches the broker)."""


def check_device_id(device_id: object) -> str:
    """``device_id`` when it is 1-128 characters of ``A-Z a-z 0-9 . _ -``; else InvalidDeviceId."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidDeviceId(
            f"device_id must be 1-128 characters of A-Z a-z 0-9 . _ -, got {device_id!r:.80}"
        )
    return device_id


def device_topic(device_id: str) -> str:
    """The topic of one device; refuses ids that are not valid topic suffixes."""
    return DEVICE_TOPIC_PREFIX + check_device_id(device_id)


# The modes a producer can publish in; ``both`` is a worker mode.
PUBLISHING_MODES = (TopicMode.PER_DEVICE, TopicMode.SHARED)
BOTH_IS_A_WORKER_MODE = (
    "TOPIC_MODE=both is a worker mode for moving from per-device topics to shared; a producer "
    "publishes to one: set per-device or shared"
)


def publishing_mode(mode: TopicMode) -> TopicMode:
    """``mode`` when a producer can publish in it; ConfigError for ``both``.

    Producers (``DeviceProducer``, ``simulate``) call it when they start, so a producer
    configured with the workers' migration mode fails at once, saying what to set.
    """
    if mode is TopicMode.BOTH:
        raise ConfigError(BOTH_IS_A_WORKER_MODE)
    return mode


def topic_for(device_id: str, mode: TopicMode) -> str:
    """The topic a device publishes to in ``mode`` (ConfigError for ``both``).

    The id is checked in each mode: an invalid one never reaches the broker.
    """
    if mode is TopicMode.BOTH:
        publishing_mode(mode)
    if mode is TopicMode.SHARED:
        check_device_id(device_id)
        return SHARED_TOPIC
    if mode is TopicMode.PER_DEVICE:
        return device_topic(device_id)
    raise ValueError(f"topic mode must be a TopicMode, got {mode!r}")


def device_of_topic(topic: str) -> str | None:
    """The device a topic belongs to, or None when it is not a device topic.

    ``device-data`` (shared) and ``device-data.dlq`` are not device topics.
    """
    if not topic.startswith(DEVICE_TOPIC_PREFIX):
        return None
    device_id = topic[len(DEVICE_TOPIC_PREFIX):]
    return device_id if DEVICE_ID_PATTERN.fullmatch(device_id) else None


def expected_device(topic: str, key: bytes | None) -> str:
    """The device every reading of a message must belong to.

    On a device topic it is the topic's suffix (the key is not looked at). On the shared
    topic it is the message key: a reading whose ``device_id`` differs from it is invalid,
    like a reading on another device's topic. A missing or undecodable key, or a topic of
    neither kind, gives a string no valid reading can match, never None (None would accept
    any device).
    """
    if topic == SHARED_TOPIC:
        if key is None:
            return ""
        return bytes(key).decode("utf-8", "replace")
    return device_of_topic(topic) or ""


def is_ingest_topic(topic: str) -> bool:
    """Whether the ingest agent consumes ``topic``: a device topic or the shared topic."""
    return topic == SHARED_TOPIC or device_of_topic(topic) is not None


class KafkaClientKwargs(TypedDict):
    """Keyword arguments of aiokafka's clients (and ``BrokerOffsets``)."""

    bootstrap_servers: list[str]
    security_protocol: str
    ssl_context: NotRequired[ssl.SSLContext]
    sasl_mechanism: NotRequired[str]
    sasl_plain_username: NotRequired[str]
    sasl_plain_password: NotRequired[str]
    client_id: NotRequired[str]


def kafka_client_kwargs(settings: Settings) -> KafkaClientKwargs:
    """Connection arguments every Kafka client of ours shares (servers, TLS, SASL)."""
    kwargs: KafkaClientKwargs = {
        "bootstrap_servers": settings.kafka.brokers.split(","),
        "security_protocol": settings.kafka.security_protocol.value,
    }
    if settings.kafka.security_protocol.uses_tls:
        kwargs["ssl_context"] = kafka_ssl_context(settings)
    if settings.kafka.security_protocol.uses_sasl:
        kwargs["sasl_mechanism"] = settings.kafka.sasl_mechanism.value
        kwargs["sasl_plain_username"] = settings.kafka.sasl_username
        kwargs["sasl_plain_password"] = settings.kafka.sasl_password
    return kwargs


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same TLS/SASL settings in the form Faust's own clients take."""
    protocol = settings.kafka.security_protocol
    context = kafka_ssl_context(settings) if protocol.uses_tls else None
    if protocol.uses_sasl:
        return faust.SASLCredentials(
            username=settings.kafka.sasl_username,
            password=settings.kafka.sasl_password,
            mechanism=settings.kafka.sasl_mechanism.value,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context else None


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS context for the brokers: the system's CAs, or ``KAFKA_CA_FILE``."""
    return create_ssl_context(cafile=settings.kafka.ca_file or None)


class TopicProvisioner:
    """Creates topics on first use and lists the device topics that exist.

    Use as an async context manager. Creation is idempotent: a topic that already exists
    (created by another producer or worker, or auto-created) counts as created, and
    concurrent callers asking for the same topic share one CreateTopics request.
    """

    def __init__(self, settings: Settings, *, retention_ms: int = RETENTION_MS) -> None:
        self._settings = settings
        self._configs = {
            "retention.ms": str(retention_ms),
            "compression.type": "producer",
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
        }
        self._admin = AIOKafkaAdminClient(
            **kafka_client_kwargs(settings),
            request_timeout_ms=int(max(settings.producer.delivery_timeout, 5.0) * 1000),
        )
        self._known: set[str] = set()
        self._creating: dict[str, asyncio.Future[None]] = {}

    async def __aenter__(self) -> "TopicProvisioner":
        await self._admin.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._admin.close()

    @property
    def configs(self) -> dict[str, str]:
        """The explicit configs each created topic gets."""
        return dict(self._configs)

    async def list_device_topics(self) -> set[str]:
        """Names of all device topics the broker has now (never the shared or DLQ topic)."""
        names = {t for t in await self._admin.list_topics() if device_of_topic(t)}
        self._known |= names
        return names

    async def ensure(self, topics: Iterable[str], *, partitions: int | None = None) -> None:
        """Create whichever of ``topics`` do not exist yet (``DEVICE_TOPIC_PARTITIONS`` each)."""
        wanted = [t for t in dict.fromkeys(topics) if t not in self._known]
        if not wanted:
            return
        others = {id(f): f for t in wanted if (f := self._creating.get(t)) is not None}
        mine = [t for t in wanted if t not in self._creating]
        if mine:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for topic in mine:
                self._creating[topic] = done
            try:
                await self._create(mine, partitions)
            except BaseException as exc:
                done.set_exception(exc)
                done.exception()  # retrieved: only the callers waiting on it re-raise it
                raise
            else:
                done.set_result(None)
            finally:
                for topic in mine:
                    self._creating.pop(topic, None)
        for other in others.values():
            await asyncio.shield(other)

    async def _create(self, topics: list[str], partitions: int | None) -> None:
        count = partitions or self._settings.topics.partitions
        response = await self._admin.create_topics(
            [
                NewTopic(t, count, self._settings.topics.replication_factor,
                         topic_configs=self._configs)
                for t in topics
            ],
            timeout_ms=30_000,
        )
        for topic, code, *rest in response.topic_errors:
            if code and for_code(code) is not TopicAlreadyExistsError:
                message = rest[0] if rest else ""
                raise for_code(code)(f"cannot create topic {topic}: {message}")
        self._known.update(topics)
        log.info("topics ready: %s%s", ", ".join(topics[:10]), " ..." if len(topics) > 10 else "")

"""Kafka topic names and their provisioning, shared by workers and producers.

Each device publishes to its own topic ``device-data-{device_id}``; invalid readings go to
``device-data.dlq``. Topics are created with explicit partitions and configs (the broker's
auto-creation would pick its own partition count), idempotently, by one implementation.
"""
from __future__ import annotations

import logging
from typing import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from schema.validation import DEVICE_ID_PATTERN
from streams.settings import Settings

DEVICE_TOPIC_PREFIX = "device-data-"
DEAD_LETTER_TOPIC = "device-data.dlq"

log = logging.getLogger(__name__)


class InvalidDeviceId(ValueError):
    """A device id that is not a valid topic suffix (and so never reaches the broker)."""


def device_topic(device_id: str) -> str:
    """The topic of one device; refuses ids that are not valid topic suffixes."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidDeviceId(
            f"device_id must be 1-128 characters of A-Z a-z 0-9 . _ -, got {device_id!r:.80}"
        )
    return DEVICE_TOPIC_PREFIX + device_id


def device_of_topic(topic: str) -> str | None:
    """The device a topic belongs to, or None when it is not a device topic."""
    if not topic.startswith(DEVICE_TOPIC_PREFIX):
        return None
    device_id = topic[len(DEVICE_TOPIC_PREFIX):]
    return device_id if DEVICE_ID_PATTERN.fullmatch(device_id) else None


def kafka_client_kwargs(settings: Settings) -> dict[str, object]:
    """Connection arguments every Kafka client of ours shares."""
    return {"bootstrap_servers": settings.kafka_brokers.split(",")}


class TopicProvisioner:
    """Creates device topics on first use and lists the ones that exist.

    Use as an async context manager. Creation is idempotent: a topic that already exists
    (created by another producer or worker) counts as created.
    """

    def __init__(self, settings: Settings, *, retention_ms: int = 7 * 24 * 3600 * 1000) -> None:
        self._settings = settings
        self._configs = {"retention.ms": str(retention_ms), "compression.type": "producer"}
        self._admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
        self._known: set[str] = set()

    async def __aenter__(self) -> "TopicProvisioner":
        await self._admin.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._admin.close()

    async def list_device_topics(self) -> set[str]:
        """Names of all device topics the broker has now."""
        names = {t for t in await self._admin.list_topics() if device_of_topic(t)}
        self._known |= names
        return names

    async def ensure(self, topics: Iterable[str], *, partitions: int | None = None) -> None:
        """Create whichever of ``topics`` do not exist yet."""
        missing = [t for t in dict.fromkeys(topics) if t not in self._known]
        if not missing:
            return
        count = partitions or self._settings.device_topic_partitions
        response = await self._admin.create_topics(
            [
                NewTopic(t, count, self._settings.topic_replication_factor, topic_configs=self._configs)
                for t in missing
            ],
            timeout_ms=30_000,
        )
        for topic, code, *rest in response.topic_errors:
            if code and for_code(code) is not TopicAlreadyExistsError:
                message = rest[0] if rest else ""
                raise for_code(code)(f"cannot create topic {topic}: {message}")
        self._known.update(missing)
        log.info("topics ready: %s", ", ".join(missing))

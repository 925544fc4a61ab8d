"""The dead-letter record of an invalid reading, as published to ``device-data.dlq``.

``topic``, ``partition`` and ``offset`` name the message the reading came from, so a
reader can find the original and drop a repeat. ``index`` is the reading's position when
the message was an array (then ``raw`` is that reading).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schema.validation import MAX_RAW_BYTES, InvalidReading


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One invalid reading, located in its source message, ready to publish."""

    topic: str
    partition: int
    offset: int
    index: int | None
    message_ms: int
    key: bytes | None
    value: bytes

    @property
    def location(self) -> tuple[str, int, int, int | None, int]:
        """Where the reading was: (topic, partition, offset, index, message timestamp)."""
        return (self.topic, self.partition, self.offset, self.index, self.message_ms)


def dead_letter(invalid: InvalidReading, message: Any) -> DeadLetter:
    """The dead letter of ``invalid``, found in the fetched Kafka record ``message``."""
    raw = invalid.raw[:MAX_RAW_BYTES]
    record: dict[str, object] = {
        "error": invalid.error,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "raw": raw.decode("utf-8", errors="replace"),
    }
    if invalid.index is not None:
        record["index"] = invalid.index
    if invalid.raw_truncated or len(invalid.raw) > MAX_RAW_BYTES:
        record["raw_truncated"] = True
    return DeadLetter(message.topic, message.partition, message.offset, invalid.index,
                      message.timestamp, message.key, orjson.dumps(record))

"""Kafka records as the consumer's feed hands them to the ingest pipeline, for unit tests."""
from __future__ import annotations

from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from faust.types import TP

TIMESTAMP_MS = 1_700_000_000_500


def record(topic: str, key: bytes | None, value: Any, offset: int = 0,
           partition: int = 0) -> ConsumerRecord:
    """A fetched record; ``value`` is JSON-encoded unless it is bytes already."""
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord(topic, partition, offset, TIMESTAMP_MS, 0, key, raw, None,
                          len(key or b""), len(raw), [])


def tp_of(r: ConsumerRecord) -> TP:
    return TP(r.topic, r.partition)


def late_by_own_device(messages: list[tuple[str, int]], grace_s: int = 0) -> int:
    """How many of the (device, seconds) readings, in order, fall in a 1-minute bucket that
    their own device's newest earlier reading (plus ``grace_s``) had closed."""
    newest: dict[str, int] = {}
    late = 0
    for device, seconds in messages:
        clock = newest.get(device)
        if clock is not None and seconds - seconds % 60 + 60 <= clock - grace_s:
            late += 1
        newest[device] = max(seconds, clock if clock is not None else seconds)
    return late

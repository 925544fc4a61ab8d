"""The dead-letter record of an invalid reading, as published to ``device-data.dlq``.

``topic``, ``partition`` and ``offset`` name the message the reading came from, so a
reader can find the original and drop a repeat (a replay after a crash can dead-letter the
same message again). ``index`` is the reading's position when the message was an array.
"""
from __future__ import annotations

import orjson

from schema.validation import InvalidReading

# Longer raw values are cut to this many bytes (and flagged): a dead letter must stay well
# under the broker's message size limit, and its prefix is enough to diagnose the fault.
MAX_RAW_BYTES = 65_536


def dead_letter_value(invalid: InvalidReading, topic: str, partition: int, offset: int) -> bytes:
    """The JSON value published for one invalid reading."""
    raw = invalid.raw[:MAX_RAW_BYTES]
    record: dict[str, object] = {
        "error": invalid.error,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "raw": raw.decode("utf-8", errors="replace"),
    }
    if invalid.index is not None:
        record["index"] = invalid.index
    if invalid.raw_truncated or len(invalid.raw) > MAX_RAW_BYTES:
        record["raw_truncated"] = True
    return orjson.dumps(record)

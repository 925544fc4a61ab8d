"""Validation of device readings (CONTRACT.md, section "Messages").

A Kafka message value on ``device-data-{device_id}`` is UTF-8 JSON: one reading object or a
JSON array of readings of that device::

    {"device_id": "sensor-001", "time": "2026-11-28T17:00:00.250Z",
     "metrics": {"temperature": 21.4, "humidity": 38.0}}

:func:`validate_message` turns one message value into its valid :class:`Reading` objects and
its :class:`InvalidReading` objects (each one goes to the dead-letter topic). It never raises.
:func:`validate_reading` checks one already decoded reading object (the producer library uses
it to refuse bad readings before sending them).

Rules (beyond the contract's wording, these are the choices made here; the reasons quote
offending values as :mod:`schema.error_text` writes them):

* A reading object must have exactly the fields ``device_id``, ``time`` and ``metrics``.
  **Unknown extra fields are rejected** (``unknown field 'x'``): the format stays strict, so a
  typo such as ``"metric"`` or ``"timestamp"`` is reported instead of being silently ignored,
  and the format can grow later without old data having meant something else.
* ``device_id``: 1-128 ASCII characters of ``A-Z a-z 0-9 . _ -``; when the topic names a
  device (``expected_device_id``), it must be equal to it.
* ``time``: as :mod:`schema.timestamps` parses it (RFC 3339 with a zone, or integer epoch
  milliseconds; years 1-9999 in UTC). Readings older than the window's ``oldest_us``
  (now - retention) or newer than its ``newest_us`` (now + 5 minutes) are invalid.
* ``metrics``: an object of 1-1000 entries; names 1-128 ASCII characters of
  ``A-Z a-z 0-9 _ . : -`` starting with a letter or ``_``; values finite numbers;
  ``true``/``false`` become 1.0/0.0. Any bad metric makes the whole reading invalid.
* A message over ``MAX_VALUE_BYTES`` is invalid as a whole without being decoded. Bad JSON,
  bytes that are not UTF-8 (a UTF-8 byte-order mark included), an empty message or a
  tombstone, an empty array, or a JSON value that is neither an object nor an array is one
  invalid reading; so is a single invalid reading object. In an array, each element is
  checked on its own: the valid ones are returned, each invalid one is reported with its
  ``index`` (an element that is not an object, e.g. an inner array, is one invalid reading).
* NaN/Infinity literals are invalid JSON (orjson refuses them), and so is a number that
  overflows a double (``1e400``). Integers too big for 64 bits are decoded by orjson as floats:
  fine as a metric value, but not as epoch milliseconds (which must be an integer).
  Nesting deeper than orjson's limit (1024) is invalid JSON.
* **Duplicate keys** (in a reading, in its metrics, anywhere in the message) make the reading
  that holds them invalid (``duplicate key 'x'``, or ``metrics: duplicate key 'x'``).
  :mod:`schema.duplicate_keys` finds them without slowing the common path (a colon count,
  and an exact scan only for suspect messages).
* Metric names already found valid are remembered in a set of at most 4096 names (emptied
  when full), to skip the regex; nothing else is cached.

``InvalidReading.raw`` is the original message value when the message as a whole is the
invalid reading (its first 64 KiB, with ``raw_truncated`` set, when it is over 1 MiB), or the
array element re-serialized as compact JSON by orjson (``index`` set). An element refused for
a duplicate key is the exception: re-serializing would drop the duplicate, so its ``raw`` is
the element's original bytes, sliced out of the message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import final

import orjson

from schema.duplicate_keys import (
    DuplicateKey,
    element_spans,
    key_tally,
    maybe_duplicates,
    scan_duplicates,
)
from schema.error_text import JSON_TYPE_NAMES, got, json_error, show, typed
from schema.timestamps import EPOCH, format_us, parse_time

__all__ = [
    "DEVICE_ID_PATTERN",
    "FUTURE_TOLERANCE",
    "InvalidReading",
    "MAX_METRICS",
    "MAX_RAW_BYTES",
    "MAX_VALUE_BYTES",
    "METRIC_NAME_PATTERN",
    "Reading",
    "ValidationWindow",
    "validate_message",
    "validate_reading",
]

MAX_VALUE_BYTES = 1_048_576
MAX_METRICS = 1000
FUTURE_TOLERANCE = timedelta(minutes=5)
# Longer raw values are cut to this many bytes (and flagged): a dead letter must stay well
# under the broker's message size limit, and its prefix is enough to diagnose the fault.
MAX_RAW_BYTES = 65_536

# Explicit ASCII classes: in a str pattern, \d and \w would also match non-ASCII digits/letters.
DEVICE_ID_PATTERN: re.Pattern[str] = re.compile(r"[A-Za-z0-9._-]{1,128}")
METRIC_NAME_PATTERN: re.Pattern[str] = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")

_ONE_US = timedelta(microseconds=1)
_FUTURE_TOLERANCE_US = FUTURE_TOLERANCE // _ONE_US


@final  # validation makes exactly these (``type(x) is Reading`` tells a result from a reason)
@dataclass(frozen=True, slots=True)
class Reading:
    """One valid reading: ``len(metrics)`` data points of one device at one time."""

    device_id: str
    time_us: int  # microseconds since the Unix epoch, UTC
    metrics: dict[str, float]  # insertion order kept

    @property
    def time(self) -> datetime:
        """The reading's time as an aware UTC datetime."""
        return EPOCH + timedelta(microseconds=self.time_us)

    @property
    def points(self) -> int:
        """Number of data points (one per metric)."""
        return len(self.metrics)


@dataclass(frozen=True, slots=True)
class InvalidReading:
    """One invalid reading, to be dead-lettered."""

    error: str  # human-readable reason
    raw: bytes  # the message value, or the array element (see the module docstring)
    index: int | None = None  # position in the array; None: the message as a whole
    raw_truncated: bool = False  # raw is only the first 64 KiB of the message


@dataclass(frozen=True, slots=True)
class ValidationWindow:
    """The accepted time range, computed once per batch."""

    oldest_us: int  # readings with time_us < oldest_us are too old
    newest_us: int  # readings with time_us > newest_us are too far in the future

    @classmethod
    def around(cls, now: datetime, retention: timedelta) -> ValidationWindow:
        """oldest = now - retention, newest = now + FUTURE_TOLERANCE (a naive ``now`` is UTC)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        now_us = (now - EPOCH) // _ONE_US
        return cls(now_us - retention // _ONE_US, now_us + _FUTURE_TOLERANCE_US)


# --------------------------------------------------------------------------- metrics

_NUMBER_TYPES = frozenset((float, int, bool))
_FLOAT_TYPE = frozenset((float,))
_NAME_RULE = "1-128 characters of A-Z a-z 0-9 _ . : - starting with a letter or _"
_isfinite = math.isfinite
_name_ok = METRIC_NAME_PATTERN.fullmatch

# Metric names repeat from reading to reading: a set of names already found valid replaces
# one regex call per name by one C-level issuperset() per reading. It is bounded: emptied
# when it reaches _KNOWN_NAMES_MAX names.
_KNOWN_NAMES_MAX = 4096
_known_names: set[str] = set()


def _check_names(metrics: dict) -> str | None:
    for name in metrics:
        if type(name) is not str or _name_ok(name) is None:
            return f"metrics: invalid metric name {show(name)} ({_NAME_RULE})"
    if len(_known_names) + len(metrics) > _KNOWN_NAMES_MAX:
        _known_names.clear()
    if len(metrics) <= _KNOWN_NAMES_MAX:
        _known_names.update(metrics)
    return None


def _check_metrics(metrics: object) -> dict[str, float] | str:
    if type(metrics) is not dict and not isinstance(metrics, dict):
        if not isinstance(metrics, Mapping):
            return f"metrics: must be an object, got {typed(metrics)}"
        metrics = dict(metrics)  # validate_reading of a non-dict mapping
    n = len(metrics)
    if n == 0 or n > MAX_METRICS:
        return f"metrics: must have 1 to {MAX_METRICS} entries, got {n}"
    if not _known_names.issuperset(metrics):
        error = _check_names(metrics)
        if error is not None:
            return error
    values = metrics.values()
    # Fast path: every value is a float, or a float/int/bool (the set of types is built in C).
    # float() of those fails only with OverflowError for a huge Python int (possible only
    # through validate_reading: orjson decodes those as floats). The sum is finite only if
    # every value is (a sum that overflows is re-checked value by value below).
    types = set(map(type, values))
    out = None
    if types <= _FLOAT_TYPE:
        out = metrics.copy()
    elif types <= _NUMBER_TYPES:
        try:
            out = dict(zip(metrics, map(float, values)))
        except OverflowError:
            pass
    if out is not None:
        total = sum(out.values())
        if total - total == 0.0:
            return out
    # Slow path: find the offending value (and accept numeric subclasses, e.g. numpy floats).
    out = {}
    for name, value in metrics.items():
        if isinstance(value, bool):
            out[name] = 1.0 if value else 0.0
            continue
        if isinstance(value, (int, float)):
            try:
                f = float(value)
            except (OverflowError, ValueError, TypeError):
                f = math.inf
            if _isfinite(f):
                out[name] = f
                continue
        return f"metrics.{name}: value must be a finite number, got {got(value)}"
    return out


# --------------------------------------------------------------------------- one reading

_FIELDS = ("device_id", "time", "metrics")
_DEVICE_RULE = "1-128 characters of A-Z a-z 0-9 . _ -"
_device_ok = DEVICE_ID_PATTERN.fullmatch


# Reading(...) of a frozen dataclass sets each field through object.__setattr__; setting
# the slots directly gives the same object at about half the cost.
_new_object = object.__new__
# (The slots' descriptors are taken from the class __dict__: through the class attribute,
# a type checker sees the field's type instead.)
_set_device_id = Reading.__dict__["device_id"].__set__
_set_time_us = Reading.__dict__["time_us"].__set__
_set_metrics = Reading.__dict__["metrics"].__set__


def _new_reading(device_id: str, time_us: int, metrics: dict[str, float]) -> Reading:
    reading = _new_object(Reading)
    _set_device_id(reading, device_id)
    _set_time_us(reading, time_us)
    _set_metrics(reading, metrics)
    return reading


_set_error = InvalidReading.__dict__["error"].__set__
_set_raw = InvalidReading.__dict__["raw"].__set__
_set_index = InvalidReading.__dict__["index"].__set__
_set_raw_truncated = InvalidReading.__dict__["raw_truncated"].__set__


def _new_invalid(error: str, raw: bytes, index: int) -> InvalidReading:
    """InvalidReading(error, raw, index), faster (an array can hold 500k invalid elements)."""
    invalid = _new_object(InvalidReading)
    _set_error(invalid, error)
    _set_raw(invalid, raw)
    _set_index(invalid, index)
    _set_raw_truncated(invalid, False)
    return invalid


def _check_reading(
    obj: dict, expected_device_id: str | None, expected_valid: bool, window: ValidationWindow
) -> Reading | str:
    """expected_valid: expected_device_id is known to be a valid id (saves a regex call)."""
    try:
        device_id = obj["device_id"]
        time_value = obj["time"]
        metrics = obj["metrics"]
    except KeyError:
        missing = [f for f in _FIELDS if f not in obj]
        return f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
    if len(obj) != 3:
        extra = [k for k in obj if k not in _FIELDS]
        return (
            f"unknown field {show(extra[0])}"
            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}"
            f" (a reading has only device_id, time, metrics)"
        )
    if type(device_id) is not str and not isinstance(device_id, str):
        return f"device_id: must be a string, got {typed(device_id)}"
    if device_id != expected_device_id or not expected_valid:
        if _device_ok(device_id) is None:
            return f"device_id: must be {_DEVICE_RULE}, got {show(device_id)}"
        if expected_device_id is not None and device_id != expected_device_id:
            return (
                f"device_id: {show(device_id)} does not match the topic's device "
                f"{show(expected_device_id)}"
            )
    time_us = parse_time(time_value)
    if isinstance(time_us, str):
        return time_us
    if time_us < window.oldest_us:
        return (
            f"time: {show(time_value)} is older than the retention period "
            f"(oldest accepted {format_us(window.oldest_us)})"
        )
    if time_us > window.newest_us:
        return (
            f"time: {show(time_value)} is more than 5 minutes in the future "
            f"(newest accepted {format_us(window.newest_us)})"
        )
    checked = _check_metrics(metrics)
    if isinstance(checked, str):
        return checked
    return _new_reading(device_id, time_us, checked)


def _expected_valid(expected_device_id: object) -> bool:
    return type(expected_device_id) is str and _device_ok(expected_device_id) is not None


def validate_reading(
    obj: object, expected_device_id: str | None, window: ValidationWindow
) -> Reading | str:
    """One decoded reading object -> a Reading, or the reason it is invalid. Never raises."""
    try:
        if not isinstance(obj, dict):
            if not isinstance(obj, Mapping):
                return f"reading must be a JSON object, got {typed(obj)}"
            obj = dict(obj)
        return _check_reading(obj, expected_device_id, _expected_valid(expected_device_id), window)
    except Exception as exc:  # safety net; no known input gets here
        return f"reading could not be validated ({type(exc).__name__})"


# --------------------------------------------------------------------------- messages


def _validate_array(
    doc: list,
    expected_device_id: str | None,
    window: ValidationWindow,
    dups: dict[int | None, DuplicateKey] | None,
    value: bytes,
) -> tuple[list[Reading], list[InvalidReading], int]:
    """Validate each element; also returns the duplicate-key tally (without name colons)."""
    readings: list[Reading] = []
    invalid: list[InvalidReading] = []
    tally = 0
    append = readings.append
    check = _check_reading
    expected_valid = _expected_valid(expected_device_id)
    spans = None
    # Invalid elements that are not objects, seen in this message: scalars keyed by
    # (type, value) -> (error, raw); small arrays keyed by their JSON -> (error, raw, tally).
    # An array of many equal elements (up to 500k in 1 MiB) then pays for one error text and
    # one raw copy. Bounded by the message; dropped with it.
    scalars: dict = {}
    for i, element in enumerate(doc):
        if dups is not None and i in dups:
            dup = dups[i]
            invalid.append(_new_invalid(dup.error, value[dup.start : dup.end], i))
            continue
        t = type(element)
        if t is dict:
            result = check(element, expected_device_id, expected_valid, window)
            if type(result) is Reading:
                append(result)
                time_value = element["time"]
                tally += 3 + len(result.metrics)
                if type(time_value) is str:
                    tally += time_value.count(":")
                continue
        elif t is not list:
            key = (t, element.hex()) if t is float else (t, element)  # -0.0 == 0.0
            known = scalars.get(key)
            if known is None:
                raw = memoryview(orjson.dumps(element)).tobytes()  # exact copy: see below
                known = scalars[key] = (_not_an_object(element), raw)
            invalid.append(_new_invalid(known[0], known[1], i))
            if t is str:
                tally += element.count(":")
            continue
        else:
            result = None
        try:
            raw = orjson.dumps(element)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (255 levels)
            if spans is None:
                spans = element_spans(value)
            start, end = spans[i]
            raw = value[start:end]
        else:
            if len(raw) <= 512:
                # orjson over-allocates its output and then shrinks it: keeping many such
                # small objects alive churns the allocator, an exact copy does not. An array
                # of many small invalid elements needs this.
                raw = memoryview(raw).tobytes()
        if result is None:  # an array element: its error and tally depend only on its JSON
            known = scalars.get(raw) if len(raw) <= 256 else None
            if known is None:
                known = (_not_an_object(element), raw, key_tally(element))
                if len(raw) <= 256:
                    scalars[raw] = known
            invalid.append(_new_invalid(known[0], known[1], i))
            tally += known[2]
            continue
        invalid.append(_new_invalid(result, raw, i))
        tally += key_tally(element)
    return readings, invalid, tally


_NOT_AN_OBJECT = "reading must be a JSON object, got "


def _not_an_object(element: object) -> str:
    # Scalars get their message without reprlib: an array of 500k numbers is 500k invalid
    # readings, and this keeps each one cheap.
    t = type(element)
    if type(element) is int and -(10**20) < element < 10**20 or t is float:
        return f"{_NOT_AN_OBJECT}{JSON_TYPE_NAMES[t]} {element!r}"
    if type(element) is str and len(element) <= 60:
        return f"{_NOT_AN_OBJECT}string {element!r}"
    return _NOT_AN_OBJECT + typed(element)


def _validate_message(
    value: bytes | None, expected_device_id: str | None, window: ValidationWindow
) -> tuple[list[Reading], list[InvalidReading]]:
    if value is None:
        return [], [InvalidReading("empty message (null value, a tombstone)", b"")]
    if type(value) is not bytes:
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        elif isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        else:
            return [], [
                InvalidReading(f"message value must be bytes, got {type(value).__name__}", b"")
            ]
    size = len(value)
    if size > MAX_VALUE_BYTES:
        return [], [
            InvalidReading(
                f"message is {size} bytes, over the 1 MiB limit ({MAX_VALUE_BYTES} bytes)",
                value[:MAX_RAW_BYTES],
                None,
                True,
            )
        ]
    if size == 0:
        return [], [InvalidReading("empty message (zero bytes)", value)]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], [InvalidReading(json_error(value, exc), value)]

    t = type(doc)
    if t is list:
        if not doc:
            return [], [InvalidReading("empty array: a message holds at least one reading", value)]
        readings, invalid, tally = _validate_array(doc, expected_device_id, window, None, value)
        if maybe_duplicates(value, tally, readings):
            dups = scan_duplicates(value)
            if dups:
                readings, invalid, _ = _validate_array(doc, expected_device_id, window, dups, value)
        return readings, invalid
    if t is dict:
        result = _check_reading(
            doc, expected_device_id, _expected_valid(expected_device_id), window
        )
        error: str | None
        if type(result) is Reading:
            readings = [result]
            error = None
            time_value = doc["time"]
            tally = 3 + len(result.metrics)
            if type(time_value) is str:
                tally += time_value.count(":")
        else:
            readings = []
            error = result
            tally = key_tally(doc)
        if maybe_duplicates(value, tally, readings):
            dups = scan_duplicates(value)
            if None in dups:
                error = dups[None].error
        if error is None:
            return readings, []
        return [], [InvalidReading(error, value)]
    return [], [
        InvalidReading(
            f"message must be a reading object or an array of readings, got {typed(doc)}",
            value,
        )
    ]


def validate_message(
    value: bytes | None, expected_device_id: str | None, window: ValidationWindow
) -> tuple[list[Reading], list[InvalidReading]]:
    """Decode one Kafka message value into its valid readings and its invalid ones.

    expected_device_id: the device the topic belongs to (None = any valid id, e.g. shared
    topic mode -- then each reading's own device_id must still be valid, and the caller
    checks the key). Never raises for any input.
    """
    try:
        return _validate_message(value, expected_device_id, window)
    except Exception as exc:  # safety net; no known input gets here
        raw = value if isinstance(value, bytes) else b""
        truncated = len(raw) > MAX_RAW_BYTES
        return [], [
            InvalidReading(
                f"message could not be validated ({type(exc).__name__})",
                raw[:MAX_RAW_BYTES],
                None,
                truncated,
            )
        ]

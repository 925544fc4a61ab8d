"""Reading times: RFC 3339 and epoch-millisecond parsing, as microseconds since the epoch.

The ``time`` of a reading (CONTRACT.md, section "Messages") is

* an RFC 3339 date-time with a zone (``Z``/``z`` or ``±hh:mm``; ``T``, ``t`` or a space
  between date and time; any number of fractional digits, truncated to microseconds, never
  rounded), or
* an integer (not a float, not a boolean) of epoch milliseconds. Integers too big for 64
  bits are decoded by orjson as floats, so they are refused here as non-integers.

A leap second (``:60``) is refused (PostgreSQL cannot store it exactly); so are dates
outside years 1-9999 in UTC (:data:`MIN_US` .. :data:`MAX_US`). :func:`parse_time` returns
the microseconds, or the reason the value is invalid (a ``"time: ..."`` string); it never
raises. The same parser reads the RFC 3339 bounds of the query routes (:func:`parse_rfc3339`).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from schema.error_text import show, typed

__all__ = ["EPOCH", "MAX_US", "MIN_US", "format_us", "parse_rfc3339", "parse_time"]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# The range PostgreSQL timestamptz and Python datetime share: years 1-9999 in UTC.
MIN_US = (datetime(1, 1, 1, tzinfo=timezone.utc) - EPOCH) // _ONE_US
MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - EPOCH) // _ONE_US

# The RFC 3339 shape (section 5.6), ASCII digits only. Checked fully (ranges) below.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# The same without a zone, only to give a precise error.
_RFC3339_NO_ZONE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?"
)
_TIME_RULE = (
    "must be an RFC 3339 date-time with a zone (Z or ±hh:mm) or integer epoch milliseconds"
)


# The fast path: a strict guard (ranges of month, day, hour, minute, second and offset
# checked by the regex itself) and then datetime.fromisoformat, which only has to check the
# day of the month and year 0. fromisoformat alone is not enough: it accepts forms that are
# not RFC 3339 (week dates, date only, no zone, any separator; hour 24 from Python 3.12).
_RFC3339_GUARD = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt ]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_rfc3339_guard = _RFC3339_GUARD.fullmatch
_fromisoformat = datetime.fromisoformat


def parse_time(value: object) -> int | str:
    """A reading's ``time`` -> microseconds since the epoch, or the reason it is invalid.

    Valid RFC 3339 text takes the fast path (guard regex + ``datetime.fromisoformat``, about
    a third of the reference's cost, docs/performance.md#validation). Whatever the guard or
    fromisoformat refuses (lower-case z, leap second, invalid date...) goes to the reference
    parser, :func:`parse_rfc3339`, for the exact reason. A test checks that both agree.
    """
    if type(value) is str:
        if _rfc3339_guard(value) is not None:
            try:
                delta = _fromisoformat(value) - EPOCH
            except (ValueError, OverflowError):
                pass
            else:
                us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
                if MIN_US <= us <= MAX_US:
                    return us
        return parse_rfc3339(value)
    if type(value) is int:
        us = value * 1000
        if us < MIN_US or us > MAX_US:
            return f"time: epoch milliseconds out of range (years 1-9999), got {show(value)}"
        return us
    if type(value) is float:
        return f"time: epoch milliseconds must be an integer, got {show(value)}"
    return f"time: {_TIME_RULE}, got {typed(value)}"


def parse_rfc3339(value: str) -> int | str:
    """Reference RFC 3339 parser: microseconds since the epoch, or the exact reason."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        if _RFC3339_NO_ZONE.fullmatch(value):
            return f"time: missing time zone (Z or ±hh:mm), got {show(value)}"
        return f"time: {_TIME_RULE}, got {show(value)}"
    year, month, day, hour_text, minute_text, second_text, frac, sign, off_h, off_m = m.groups()
    hour = int(hour_text)
    minute = int(minute_text)
    second = int(second_text)
    if hour > 23 or minute > 59 or second > 59:
        if second == 60 and hour <= 23 and minute <= 59:
            return (
                f"time: leap second (:60) is not supported (PostgreSQL cannot store it), "
                f"got {show(value)}"
            )
        return f"time: hour, minute or second out of range, got {show(value)}"
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return f"time: invalid date (year 1-9999, month 1-12, day of month), got {show(value)}"
    us = (days * 86400 + hour * 3600 + minute * 60 + second) * 1_000_000
    if frac is not None:
        us += int(frac[:6].ljust(6, "0"))  # microsecond precision: extra digits truncated
    if sign is not None:
        offset_h = int(off_h)
        offset_m = int(off_m)
        if offset_h > 23 or offset_m > 59:
            return f"time: zone offset out of range, got {show(value)}"
        offset = (offset_h * 3600 + offset_m * 60) * 1_000_000
        us = us - offset if sign == "+" else us + offset
    if us < MIN_US or us > MAX_US:
        return f"time: out of range (years 1-9999 in UTC), got {show(value)}"
    return us


def format_us(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC text ("...Z"); out of range, as a count."""
    try:
        return (EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError):
        return f"{us} us since the epoch"

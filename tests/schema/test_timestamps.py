"""Unit and property tests of schema.timestamps (no network, no stack)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema.timestamps import EPOCH, MAX_US, MIN_US, format_us, parse_rfc3339, parse_time

T = "2026-11-28T16:59:00.250Z"
T_US = 1_795_885_140_250_000  # T in microseconds since the epoch

# VALIDATION_EXAMPLES=5000 for a longer search by hand; the suite default keeps it fast.
FAST = settings(
    max_examples=int(os.environ.get("VALIDATION_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def rfc3339_times(draw, instants: st.SearchStrategy[int]):
    """(text, the time_us it means after truncation to microseconds), for an instant drawn
    from ``instants`` (microseconds since the epoch), in any zone, separator and precision."""
    instant_us = draw(instants)
    offset_min = draw(st.sampled_from([0, 0, 60, -60, 330, -570, 23 * 60 + 59, -(23 * 60 + 59)]))
    local = EPOCH + timedelta(microseconds=instant_us) + timedelta(minutes=offset_min)
    sep = draw(st.sampled_from("TTt "))
    digits = draw(st.integers(min_value=0, max_value=9))
    micro = local.microsecond
    if digits <= 6:
        frac = f"{micro:06d}"[:digits]
        expected = instant_us - micro % 10 ** (6 - digits)
    else:
        extra = draw(st.text("0123456789", min_size=digits - 6, max_size=digits - 6))
        frac = f"{micro:06d}" + extra
        expected = instant_us
    if offset_min == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00"]))
    else:
        sign = "+" if offset_min >= 0 else "-"
        zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}" + (f".{frac}" if frac else "") + zone
    return text, expected


# 2026-11-28T17:00:00Z - 90 days + 1 s .. + 5 minutes, the window of the validation tests
_NOW_US = T_US + 60_000_000 - 250_000
instants_us = st.integers(_NOW_US - 90 * 86_400_000_000 + 1_000_000, _NOW_US + 300_000_000)


# --------------------------------------------------------------------------- examples


def test_epoch_milliseconds_and_rfc3339_give_the_same_time():
    assert parse_time(T_US // 1000) == parse_time(T) == T_US


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T16:59:00.250Z",
        "2026-11-28t16:59:00.250z",
        "2026-11-28 16:59:00.250Z",
        "2026-11-28T16:59:00.25Z",
        "2026-11-28T16:59:00.250000Z",
        "2026-11-28T16:59:00.2500009Z",
        "2026-11-28T16:59:00.250+00:00",
        "2026-11-28T16:59:00.250-00:00",
        "2026-11-28T17:59:00.250+01:00",
        "2026-11-28T22:29:00.250+05:30",
        "2026-11-28T06:59:00.250-10:00",
        "2026-11-29T03:59:00.250+11:00",
    ],
)
def test_rfc3339_forms_give_the_same_instant(text):
    assert parse_time(text) == T_US


def test_fractional_seconds_are_truncated_to_microseconds_not_rounded():
    us = parse_time("2026-11-28T16:59:00.9999999999Z")
    assert isinstance(us, int) and us % 1_000_000 == 999_999


def test_time_without_zone_is_invalid():
    error = parse_time("2026-11-28T16:59:00.250")
    assert error == "time: missing time zone (Z or ±hh:mm), got '2026-11-28T16:59:00.250'"


def test_leap_second_is_refused_with_a_clear_reason():
    error = parse_time("2016-12-31T23:59:60Z")
    assert isinstance(error, str) and "leap second" in error


def test_years_outside_1_to_9999_give_an_error_not_an_exception():
    assert "invalid date" in str(parse_time("0000-12-31T23:59:59Z"))
    assert "out of range" in str(parse_time("0001-01-01T00:00:00+00:01"))
    assert parse_time("0001-01-01T00:00:00Z") == MIN_US
    assert parse_time("9999-12-31T23:59:59.999999Z") == MAX_US
    assert "out of range" in str(parse_time(-62135596800001))
    assert (EPOCH + timedelta(microseconds=MIN_US)).year == 1


def test_bool_and_float_are_not_epoch_milliseconds():
    assert "got true" in str(parse_time(True))
    assert "must be an integer" in str(parse_time(float(T_US // 1000)))


def test_other_types_are_refused_with_their_json_type():
    assert parse_time(None) == (
        "time: must be an RFC 3339 date-time with a zone (Z or ±hh:mm) or integer epoch "
        "milliseconds, got null"
    )
    assert str(parse_time([1])).endswith("got array [1]")


def test_format_us_writes_utc_rfc3339_and_never_raises():
    assert format_us(T_US) == "2026-11-28T16:59:00.250000Z"
    assert format_us(0) == "1970-01-01T00:00:00Z"
    assert format_us(MAX_US + 1) == f"{MAX_US + 1} us since the epoch"


def test_epoch_is_aware_utc():
    assert EPOCH == datetime(1970, 1, 1, tzinfo=timezone.utc)


def test_fast_time_path_and_reference_parser_agree_on_examples():
    for text in [
        "2026-11-28T16:59:00.250Z",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "2000-02-29T12:00:00+14:00",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:59:59-23:59",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.9999999+00:01",
        "2024-06-30 23:59:59.1-00:00",
    ]:
        assert parse_time(text) == parse_rfc3339(text), text


# --------------------------------------------------------------------------- properties


@FAST
@given(st.data())
def test_rfc3339_text_gives_the_instant_it_names(data):
    text, expected = data.draw(rfc3339_times(instants_us))
    assert parse_time(text) == expected


def field(low: int, high: int) -> st.SearchStrategy[str]:
    """Two digits, mostly within [low, high], sometimes anything."""
    return (st.integers(low, high) | st.integers(0, 99)).map(lambda n: f"{n:02d}")


@FAST
@given(
    (st.integers(1, 9999) | st.integers(0, 9999)).map(lambda n: f"{n:04d}"),
    field(1, 12), field(1, 31), st.sampled_from("TTt X"),
    field(0, 23), field(0, 59), field(0, 60), st.text("0123456789", max_size=10),
    st.sampled_from(["Z", "Z", "z", "", "+", "-", "+0100"]), field(0, 23), field(0, 59),
)
def test_fast_time_path_and_reference_parser_agree(year, month, day, sep, hour, minute,
                                                   second, frac, zone, off_h, off_m):
    text = f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}"
    if frac:
        text += "." + frac
    if zone in ("+", "-"):
        text += f"{zone}{off_h}:{off_m}"
    else:
        text += zone
    fast = parse_time(text)
    assert fast == parse_rfc3339(text)
    if isinstance(fast, int):
        assert MIN_US <= fast <= MAX_US

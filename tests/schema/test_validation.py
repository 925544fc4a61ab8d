"""Unit tests of schema.validation (no network, no stack)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from schema import validation
from schema.timestamps import EPOCH
from schema.validation import (
    DEVICE_ID_PATTERN,
    FUTURE_TOLERANCE,
    MAX_METRICS,
    MAX_VALUE_BYTES,
    InvalidReading,
    Reading,
    ValidationWindow,
    validate_message,
    validate_reading,
)
from tests.schema.bad_messages import BAD_MESSAGES, DEVICE_ID, MIXED_ARRAYS, RETENTION

NOW = datetime(2026, 11, 28, 17, 0, 0, tzinfo=timezone.utc)
WINDOW = ValidationWindow.around(NOW, timedelta(days=90))
T = "2026-11-28T16:59:00.250Z"
T_US = 1_795_885_140_250_000  # T in microseconds since the epoch


def rd(**fields: object) -> dict:
    obj: dict = {
        "device_id": DEVICE_ID,
        "time": T,
        "metrics": {"temperature": 21.4, "humidity": 38.0},
    }
    obj.update(fields)
    return obj


def msg(obj: object) -> bytes:
    return orjson.dumps(obj)


def check(value: bytes | None, expected: str | None = DEVICE_ID, window: ValidationWindow = WINDOW):
    return validate_message(value, expected, window)


def one_error(
    value: bytes | None, expected: str | None = DEVICE_ID, window=WINDOW
) -> InvalidReading:
    readings, invalid = check(value, expected, window)
    assert readings == [], readings
    assert len(invalid) == 1, invalid
    return invalid[0]


def one_reading(value: bytes, expected: str | None = DEVICE_ID, window=WINDOW) -> Reading:
    readings, invalid = check(value, expected, window)
    assert invalid == [], invalid
    assert len(readings) == 1
    return readings[0]


# --------------------------------------------------------------------------- interface


def test_interface_constants_are_the_agreed_values():
    assert MAX_VALUE_BYTES == 1_048_576
    assert MAX_METRICS == 1000
    assert FUTURE_TOLERANCE == timedelta(minutes=5)


def test_device_id_pattern_fullmatches_valid_ids_only():
    for ok in ["sensor-001", "a", "A.b_c-9", "x" * 128]:
        assert DEVICE_ID_PATTERN.fullmatch(ok)
    for bad in ["", "x" * 129, "sensor 1", "sénsor", "sensor-１", "a/b", "a\n", "a:b"]:
        assert DEVICE_ID_PATTERN.fullmatch(bad) is None


def test_reading_and_invalid_reading_are_frozen():
    reading = one_reading(msg(rd()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        reading.device_id = "x"  # type: ignore[misc]
    invalid = InvalidReading("e", b"r", None)
    assert invalid.raw_truncated is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        invalid.error = "x"  # type: ignore[misc]


def test_validated_reading_equals_one_built_with_the_constructor():
    reading = one_reading(msg(rd()))
    assert reading == Reading(DEVICE_ID, T_US, {"temperature": 21.4, "humidity": 38.0})
    assert repr(reading).startswith("Reading(device_id='sensor-001'")


def test_reading_time_is_an_aware_utc_datetime_and_points_counts_metrics():
    reading = one_reading(msg(rd()))
    assert reading.time == datetime(2026, 11, 28, 16, 59, 0, 250000, tzinfo=timezone.utc)
    assert reading.time.utcoffset() == timedelta(0)
    assert reading.points == 2


def test_window_around_is_now_minus_retention_to_now_plus_five_minutes():
    window = ValidationWindow.around(NOW, timedelta(days=1))
    now_us = (NOW - EPOCH) // timedelta(microseconds=1)
    assert window.oldest_us == now_us - 86_400_000_000
    assert window.newest_us == now_us + 300_000_000


def test_window_around_a_naive_now_takes_it_as_utc():
    naive = ValidationWindow.around(NOW.replace(tzinfo=None), timedelta(days=1))
    assert naive == ValidationWindow.around(NOW, timedelta(days=1))


def test_window_around_another_zone_is_the_same_instant():
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    assert ValidationWindow.around(paris, RETENTION) == ValidationWindow.around(NOW, RETENTION)


# --------------------------------------------------------------------------- valid readings


def test_valid_single_reading_is_stored():
    reading = one_reading(msg(rd()))
    assert reading.device_id == DEVICE_ID
    assert reading.time_us == T_US
    assert reading.metrics == {"temperature": 21.4, "humidity": 38.0}


def test_metric_values_are_floats_and_keep_insertion_order():
    names = [f"m{i}" for i in range(50)][::-1]
    reading = one_reading(msg(rd(metrics={n: i for i, n in enumerate(names)})))
    assert list(reading.metrics) == names
    assert all(type(v) is float for v in reading.metrics.values())


def test_booleans_are_stored_as_one_and_zero():
    reading = one_reading(msg(rd(metrics={"door_open": True, "alarm": False, "t": 1})))
    assert reading.metrics == {"door_open": 1.0, "alarm": 0.0, "t": 1.0}
    assert all(type(v) is float for v in reading.metrics.values())


def test_integers_beyond_64_bits_are_accepted_as_metric_values():
    value = (
        b'{"device_id":"sensor-001","time":"' + T.encode()
        + b'","metrics":{"big":1' + b"0" * 30 + b"}}"
    )
    assert one_reading(value).metrics == {"big": 1e30}


def test_device_id_of_128_characters_and_metric_name_of_128_characters_are_valid():
    device = "d" * 128
    reading = one_reading(msg(rd(device_id=device, metrics={"m" * 128: 1})), device)
    assert reading.metrics == {"m" * 128: 1.0}


def test_metric_names_may_hold_colons_dots_dashes_and_start_with_underscore():
    metrics = {"_x": 1, "cpu:0.load-1m": 2, "a.b.c": 3, "z:": 4}
    expected = {k: float(v) for k, v in metrics.items()}
    assert one_reading(msg(rd(metrics=metrics))).metrics == expected


def test_exactly_1000_metrics_is_valid_and_1001_is_not():
    metrics = {f"m{i}": i for i in range(1000)}
    assert one_reading(msg(rd(metrics=metrics))).points == 1000
    metrics["one_more"] = 1
    assert "1 to 1000" in one_error(msg(rd(metrics=metrics))).error


def test_pretty_printed_json_with_whitespace_is_valid():
    value = json.dumps(rd(metrics={"a:b": 1, "c": 2.5}), indent=4).encode()
    assert one_reading(value).metrics == {"a:b": 1.0, "c": 2.5}


def test_escaped_characters_that_decode_to_valid_ones_are_accepted():
    value = (
        b'{"device_\\u0069d":"sensor\\u002d001","time":"' + T.encode()
        + b'","metrics":{"t\\u0065mp":1,"a\\/b":2}}'
    ).replace(b"a\\/b", b"a\\u002eb")
    assert one_reading(value).metrics == {"temp": 1.0, "a.b": 2.0}


def test_shared_topic_mode_accepts_any_valid_device_id():
    value = msg([rd(device_id="a"), rd(device_id="b-2")])
    readings, invalid = check(value, None)
    assert invalid == []
    assert [r.device_id for r in readings] == ["a", "b-2"]


def test_shared_topic_mode_still_refuses_an_invalid_device_id():
    assert "device_id: must be" in one_error(msg(rd(device_id="a b")), None).error


def test_a_message_of_exactly_one_mib_is_decoded():
    body = msg(rd())
    value = body[:-1] + b" " * (MAX_VALUE_BYTES - len(body)) + b"}"
    assert len(value) == MAX_VALUE_BYTES
    assert one_reading(value).device_id == DEVICE_ID


def test_bytearray_and_memoryview_values_are_accepted():
    assert one_reading(bytearray(msg(rd()))).device_id == DEVICE_ID  # type: ignore[arg-type]
    assert one_reading(memoryview(msg(rd()))).device_id == DEVICE_ID  # type: ignore[arg-type]


# --------------------------------------------------------------------------- invalid readings


def test_reading_with_one_bad_metric_is_invalid_as_a_whole():
    value = msg(rd(metrics={"temperature": 21.4, "humidity": "wet", "pressure": 1013}))
    invalid = one_error(value)
    assert invalid.error == "metrics.humidity: value must be a finite number, got 'wet'"
    assert invalid.raw == value and invalid.index is None


def test_array_keeps_valid_readings_and_reports_each_invalid_with_index():
    elements = [rd(), rd(metrics={"a": None}), rd(time=1), [rd()], rd(device_id="sensor-002"), rd()]
    readings, invalid = check(msg(elements))
    assert len(readings) == 2
    assert [i.index for i in invalid] == [1, 2, 3, 4]
    for item in invalid:
        assert item.raw == orjson.dumps(elements[item.index])
        assert item.error
        assert item.raw_truncated is False


def test_array_of_many_equal_scalars_reports_each_with_its_own_json():
    readings, invalid = check(b"[0.0,-0.0,1,true,1.0,\"a:b\",\"a:b\",[],[],{},{}]")
    assert readings == []
    assert [i.raw for i in invalid] == [
        b"0.0", b"-0.0", b"1", b"true", b"1.0", b'"a:b"', b'"a:b"', b"[]", b"[]", b"{}", b"{}"
    ]
    assert [i.index for i in invalid] == list(range(11))
    assert "got true" in invalid[3].error and "got integer 1" in invalid[2].error


def test_device_id_must_match_topic():
    invalid = one_error(msg(rd(device_id="sensor-002")), "sensor-001")
    assert invalid.error == "device_id: 'sensor-002' does not match the topic's device 'sensor-001'"


def test_device_id_equal_to_an_invalid_topic_suffix_is_still_invalid():
    assert "device_id: must be" in one_error(msg(rd(device_id="x" * 200)), "x" * 200).error


def test_time_older_than_retention_is_invalid():
    at_limit = WINDOW.oldest_us
    assert one_reading(msg(rd(time=at_limit // 1000))).time_us == at_limit
    error = one_error(msg(rd(time=(at_limit - 1000) // 1000))).error
    assert "older than the retention period" in error
    assert "2026-08-30T17:00:00Z" in error


def test_time_more_than_five_minutes_ahead_is_invalid():
    five_ahead = "2026-11-28T17:05:00Z"
    assert one_reading(msg(rd(time=five_ahead))).time == NOW + FUTURE_TOLERANCE
    error = one_error(msg(rd(time="2026-11-28T17:05:00.000001Z"))).error
    assert "more than 5 minutes in the future" in error


def test_a_reading_at_the_oldest_storable_time_is_valid_in_a_wide_window():
    # time parsing itself: tests/schema/test_timestamps.py
    wide = ValidationWindow.around(NOW, timedelta(days=4_000_000))
    assert one_reading(msg(rd(time="0001-01-01T00:00:00Z")), window=wide).time.year == 1
    assert "out of range" in one_error(msg(rd(time=-62135596800001)), window=wide).error


def test_extra_top_level_field_is_rejected_with_its_name():
    error = one_error(msg(rd(unit="C", site="x"))).error
    assert error.startswith("unknown field 'unit' (and 1 more)")


def test_value_over_one_mib_is_invalid_without_decoding(monkeypatch):
    value = b"[" + b" " * MAX_VALUE_BYTES + b"]"

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded a value over 1 MiB")

    monkeypatch.setattr(validation.orjson, "loads", must_not_decode)
    invalid = one_error(value)
    assert invalid.error == f"message is {len(value)} bytes, over the 1 MiB limit (1048576 bytes)"
    assert invalid.raw == value[:65536]
    assert invalid.raw_truncated is True
    assert invalid.index is None


def test_tombstone_is_an_invalid_empty_message():
    invalid = one_error(None)
    assert "empty message" in invalid.error
    assert invalid.raw == b""


def test_non_bytes_value_is_invalid_not_an_exception():
    assert "must be bytes" in one_error(12345).error  # type: ignore[arg-type]


def test_duplicate_keys_are_invalid():
    top = (
        b'{"device_id":"sensor-001","time":"' + T.encode()
        + b'","metrics":{"a":1},"metrics":{"b":2}}'
    )
    assert one_error(top).error == "duplicate key 'metrics'"
    inner = b'{"device_id":"sensor-001","time":"' + T.encode() + b'","metrics":{"a":1,"b":2,"a":1}}'
    assert one_error(inner).error == "metrics: duplicate key 'a'"


def test_duplicate_key_in_an_array_element_invalidates_only_that_element_and_keeps_its_bytes():
    bad = b'{"device_id":"sensor-001","time":"' + T.encode() + b'","metrics":{"a":1, "a" :2}}'
    value = b"[ " + msg(rd()) + b" ,\n " + bad + b" , " + msg(rd()) + b" ]"
    readings, invalid = check(value)
    assert len(readings) == 2
    assert len(invalid) == 1
    assert invalid[0].index == 1
    assert invalid[0].error == "metrics: duplicate key 'a'"
    assert invalid[0].raw == bad


def test_duplicate_key_hidden_by_an_escape_and_a_colon_count_is_found():
    # Without the backslash rule, the escaped colon would balance the colon count.
    value = (
        b'{"device_id":"sensor-001","time":"' + T.encode()
        + b'","metrics":{"a":1,"a":2,"b\\u003a":3}}'
    )
    assert one_error(value).error == "metrics: duplicate key 'a'"


def test_duplicate_key_whose_dropped_value_holds_colons_is_found():
    value = (
        b'{"device_id":"sensor-001","time":"2020-01-01T00:00:00Z","time":"' + T.encode()
        + b'","metrics":{"a:b":1}}'
    )
    assert one_error(value).error == "duplicate key 'time'"


def test_duplicate_keys_nested_inside_an_invalid_reading_are_reported():
    value = msg([rd()])[:-1] + b',{"x":{"y":1,"y":2}}]'
    readings, invalid = check(value)
    assert len(readings) == 1
    assert invalid[0].index == 1 and invalid[0].error == "x: duplicate key 'y'"


def test_same_key_in_different_objects_is_not_a_duplicate():
    value = msg([rd(metrics={"a": 1}), rd(metrics={"a": 2})])
    readings, invalid = check(value)
    assert invalid == [] and len(readings) == 2


def test_deep_nesting_gives_an_error_not_a_crash():
    for value in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 1023 + b"1" + b"}" * 1023):
        readings, invalid = check(value)
        assert readings == [] and len(invalid) == 1 and invalid[0].error


def test_nesting_within_orjson_limit_inside_an_array_is_one_invalid_element_per_item():
    deep = b"[" * 1000 + b"]" * 1000
    value = b"[" + msg(rd()) + b"," + deep + b',{"k":' + deep + b',"k":1}]'
    readings, invalid = check(value)
    assert len(readings) == 1
    assert [i.index for i in invalid] == [1, 2]
    assert invalid[0].raw == deep  # too deep for orjson.dumps: the original bytes
    assert invalid[1].error == "duplicate key 'k'"
    assert invalid[1].raw == b'{"k":' + deep + b',"k":1}'


def test_error_messages_are_short_and_name_the_field():
    long_value = "x" * 10_000
    for value in (
        msg(rd(metrics={"a": long_value})),
        msg(rd(device_id=long_value)),
        msg(rd(time=long_value)),
        msg(rd(metrics={long_value: 1})),
        msg(rd(**{long_value: 1})),
        msg([[long_value] * 1000]),
    ):
        error = one_error(value).error
        assert len(error) < 300, error
        assert "Traceback" not in error


def test_corpus_has_at_least_40_distinct_kinds():
    names = [name for name, _, _ in BAD_MESSAGES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


_REAL_WINDOW = ValidationWindow.around(datetime.now(timezone.utc), RETENTION)


@pytest.mark.parametrize(
    ("name", "value", "expected"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES]
)
def test_each_bad_message_is_exactly_one_invalid_reading(name, value, expected):
    readings, invalid = validate_message(value, DEVICE_ID, _REAL_WINDOW)
    assert readings == []
    assert len(invalid) == 1
    item = invalid[0]
    assert expected in item.error
    assert "Traceback" not in item.error and len(item.error) < 300
    if name.startswith("array_of_") and not item.raw_truncated:
        assert item.index == 0
        assert item.raw == orjson.dumps(orjson.loads(value)[0])
    else:
        assert item.index is None
        if item.raw_truncated:
            assert len(value) > MAX_VALUE_BYTES and item.raw == value[:65536]
        else:
            assert item.raw == value


@pytest.mark.parametrize(
    ("name", "value", "valid", "errors"), MIXED_ARRAYS, ids=[c[0] for c in MIXED_ARRAYS]
)
def test_mixed_arrays_store_valid_readings_and_report_each_invalid_one(name, value, valid, errors):
    readings, invalid = validate_message(value, DEVICE_ID, _REAL_WINDOW)
    assert len(readings) == valid
    assert {i.index: i for i in invalid}.keys() == errors.keys()
    for item in invalid:
        assert errors[item.index] in item.error


# --------------------------------------------------------------------------- validate_reading


def test_validate_reading_returns_reading_or_reason():
    assert isinstance(validate_reading(rd(), DEVICE_ID, WINDOW), Reading)
    assert validate_reading(rd(metrics={}), DEVICE_ID, WINDOW) == (
        "metrics: must have 1 to 1000 entries, got 0"
    )


def test_validate_reading_never_raises_for_odd_python_objects():
    class Weird:
        def __repr__(self):
            raise RuntimeError("no repr")

    cases = [
        None, 1, "x", [], Weird(),
        rd(metrics={1: 1.0}),
        rd(metrics={"a": 10**5000}),
        rd(metrics={"a": float("nan")}),
        rd(metrics={"a": float("inf")}),
        rd(metrics={"a": complex(1, 1)}),
        rd(metrics={"a": Weird()}),
        rd(metrics=Weird()),
        rd(time=10**5000),
        rd(time=Weird()),
        rd(device_id=Weird()),
        {Weird(): 1},
    ]
    for case in cases:
        result = validate_reading(case, DEVICE_ID, WINDOW)
        assert isinstance(result, str) and result, case


def test_validate_reading_accepts_mappings_and_float_subclasses():
    class MyFloat(float):
        pass

    from types import MappingProxyType

    obj = MappingProxyType(rd(metrics=MappingProxyType({"a": MyFloat(1.5), "b": 2})))
    reading = validate_reading(obj, DEVICE_ID, WINDOW)
    assert isinstance(reading, Reading)
    assert reading.metrics == {"a": 1.5, "b": 2.0}
    assert all(type(v) is float for v in reading.metrics.values())


def test_validate_reading_does_not_share_the_callers_metrics_dict():
    metrics = {"a": 1.5}
    reading = validate_reading(rd(metrics=metrics), DEVICE_ID, WINDOW)
    metrics["a"] = 99.0
    assert reading.metrics == {"a": 1.5}


def test_finite_values_whose_sum_overflows_are_valid():
    obj = rd(metrics={"a": 1e308, "b": 1e308, "c": 10**300})
    reading = validate_reading(obj, DEVICE_ID, WINDOW)
    assert isinstance(reading, Reading) and reading.metrics["a"] == 1e308


def test_validate_message_and_validate_reading_agree_on_a_decoded_reading():
    for obj in [rd(), rd(time=1), rd(metrics={"a": "x"}), rd(device_id="other"), rd(extra=1)]:
        readings, invalid = check(msg(obj))
        expected = validate_reading(obj, DEVICE_ID, WINDOW)
        if isinstance(expected, Reading):
            assert readings == [expected]
        else:
            assert invalid[0].error == expected


# --------------------------------------------------------------------------- internals


def test_known_metric_names_cache_stays_bounded():
    for i in range(20):
        metrics = {f"n{i}_{j}": j for j in range(1000)}
        assert isinstance(validate_reading(rd(metrics=metrics), DEVICE_ID, WINDOW), Reading)
        assert len(validation._known_names) <= validation._KNOWN_NAMES_MAX


def test_invalid_names_never_enter_the_known_names_cache():
    validate_reading(rd(metrics={"ok": 1, "9bad": 2}), DEVICE_ID, WINDOW)
    assert "9bad" not in validation._known_names
    assert "9bad" in validate_reading(rd(metrics={"9bad": 2}), DEVICE_ID, WINDOW)

"""Property tests of schema.validation (hypothesis): it never raises, accounts for every
reading, and round-trips valid readings."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema import validation
from schema.validation import (
    MAX_VALUE_BYTES,
    InvalidReading,
    Reading,
    ValidationWindow,
    validate_message,
    validate_reading,
)
from tests.schema.test_timestamps import rfc3339_times

NOW = datetime(2026, 11, 28, 17, 0, 0, tzinfo=timezone.utc)
WINDOW = ValidationWindow.around(NOW, timedelta(days=90))

# VALIDATION_EXAMPLES=5000 for a longer search by hand; the suite default keeps it fast.
FAST = settings(
    max_examples=int(os.environ.get("VALIDATION_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)

ID_CHARS = "ABCXYZabcxyz0189._-"
NAME_FIRST = "ABCXYZabcxyz_"
NAME_CHARS = NAME_FIRST + "0189.:-"

valid_device_ids = st.text(ID_CHARS, min_size=1, max_size=128)
device_ids = (
    valid_device_ids
    | st.sampled_from(["", "x" * 129, "a b", "sénsor", "a\n", "a:b", "a/b"])
    | json_scalars
)
valid_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(NAME_FIRST),
    st.text(NAME_CHARS, max_size=127),
)
names = (
    valid_names
    | st.text(max_size=10)
    | st.sampled_from(["", "9a", "-a", "a b", "é", "m" * 129])
)
valid_values = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.booleans()
)
values = valid_values | json_values

# instants inside the window, with some room for truncation of fractional digits
instants_us = st.integers(min_value=WINDOW.oldest_us + 1_000_000, max_value=WINDOW.newest_us)


@st.composite
def valid_readings(draw, device_id=None):
    """(reading object, expected Reading)."""
    if device_id is None:
        device_id = draw(valid_device_ids)
    if draw(st.booleans()):
        ms = draw(
            st.integers(WINDOW.oldest_us // 1000 + 1, WINDOW.newest_us // 1000)
        )
        time_value, time_us = ms, ms * 1000
    else:
        time_value, time_us = draw(rfc3339_times(instants_us))
    metrics = draw(st.dictionaries(valid_names, valid_values, min_size=1, max_size=8))
    obj = {"device_id": device_id, "time": time_value, "metrics": metrics}
    order = draw(st.permutations(list(obj)))
    obj = {k: obj[k] for k in order}
    expected = Reading(device_id, time_us, {k: float(v) for k, v in metrics.items()})
    return obj, expected


@st.composite
def reading_like(draw):
    """Objects shaped like readings, each field possibly wrong, missing or extra."""
    obj: dict = {}
    if draw(st.integers(0, 9)):
        obj["device_id"] = draw(st.just("dev-1") | device_ids)
    if draw(st.integers(0, 9)):
        obj["time"] = draw(
            rfc3339_times(instants_us).map(lambda t: t[0])
            | instants_us.map(lambda us: us // 1000)
            | st.sampled_from(
                ["2026-11-28T17:00:00", "2016-12-31T23:59:60Z", "0000-01-01T00:00:00Z"]
            )
            | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | json_values
        )
    if draw(st.integers(0, 9)):
        obj["metrics"] = draw(
            st.dictionaries(names, values, max_size=6)
            | st.dictionaries(valid_names, valid_values, min_size=1, max_size=6)
            | json_values
        )
    if not draw(st.integers(0, 9)):
        obj[draw(st.text(max_size=8))] = draw(json_values)
    return obj


def dumps_variant(draw, obj: object) -> bytes:
    """The same JSON in a few spellings: compact, spaced, indented."""
    style = draw(st.sampled_from(["orjson", "spaced", "indent", "ascii"]))
    if style == "orjson":
        return orjson.dumps(obj)
    if style == "spaced":
        return json.dumps(obj, separators=(" , ", " : "), ensure_ascii=False).encode()
    if style == "indent":
        return json.dumps(obj, indent=2, ensure_ascii=False).encode()
    return json.dumps(obj).encode()  # \u escapes for non-ASCII


def assert_well_formed(value: bytes, result: object) -> tuple[list[Reading], list[InvalidReading]]:
    readings, invalid = result  # type: ignore[misc]
    assert isinstance(readings, list) and isinstance(invalid, list)
    assert readings or invalid
    for reading in readings:
        assert isinstance(reading, Reading)
        assert validation.DEVICE_ID_PATTERN.fullmatch(reading.device_id)
        assert WINDOW.oldest_us <= reading.time_us <= WINDOW.newest_us
        assert 1 <= len(reading.metrics) <= 1000
        assert all(type(v) is float for v in reading.metrics.values())
    for item in invalid:
        assert isinstance(item, InvalidReading)
        assert isinstance(item.error, str) and item.error.strip()
        assert "Traceback" not in item.error and len(item.error) < 400
        assert isinstance(item.raw, bytes)
        if item.index is None:
            assert item.raw == (value[:65536] if item.raw_truncated else value)
    return readings, invalid


def check_accounting(value: bytes, doc: object, readings, invalid) -> None:
    if isinstance(doc, list) and doc and len(value) <= MAX_VALUE_BYTES:
        indices = [i.index for i in invalid]
        assert all(isinstance(i, int) for i in indices)
        assert indices == sorted(set(indices))
        assert all(0 <= i < len(doc) for i in indices)
        assert len(readings) + len(invalid) == len(doc)
    else:
        assert len(readings) + len(invalid) == 1
        assert all(i.index is None for i in invalid)


# --------------------------------------------------------------------------- never raises


@FAST
@given(st.binary(max_size=3000))
def test_any_bytes_give_readings_or_invalid_readings_never_an_exception(value):
    assert_well_formed(value, validate_message(value, "dev-1", WINDOW))
    assert_well_formed(value, validate_message(value, None, WINDOW))


@FAST
@given(st.text('{}[]",:0123456789.eE+-truefalsn \\u\n', max_size=300))
def test_json_like_text_never_raises(text):
    value = text.encode()
    assert_well_formed(value, validate_message(value, "dev-1", WINDOW))


@FAST
@given(json_values)
def test_any_json_value_accounts_for_every_array_element_exactly_once(doc):
    value = orjson.dumps(doc)
    readings, invalid = assert_well_formed(value, validate_message(value, None, WINDOW))
    check_accounting(value, doc, readings, invalid)


@FAST
@given(st.data())
def test_reading_shaped_objects_agree_with_validate_reading(data):
    obj = data.draw(reading_like())
    expected_device = data.draw(st.sampled_from(["dev-1", None]))
    value = dumps_variant(data.draw, obj)
    readings, invalid = assert_well_formed(value, validate_message(value, expected_device, WINDOW))
    expected = validate_reading(obj, expected_device, WINDOW)
    decoded = validate_reading(orjson.loads(value), expected_device, WINDOW)
    if isinstance(expected, Reading):
        assert readings == [expected] == [decoded]
    else:
        assert [i.error for i in invalid] == [decoded]
        assert readings == []


@FAST
@given(st.data())
def test_arrays_of_reading_shaped_objects_account_for_each_element(data):
    elements = data.draw(
        st.lists(reading_like() | valid_readings("dev-1").map(lambda r: r[0]) | json_values,
                 min_size=1, max_size=5)
    )
    value = dumps_variant(data.draw, elements)
    readings, invalid = assert_well_formed(value, validate_message(value, "dev-1", WINDOW))
    check_accounting(value, elements, readings, invalid)
    expected = [validate_reading(e, "dev-1", WINDOW) for e in elements]
    assert readings == [r for r in expected if isinstance(r, Reading)]
    assert [(i.index, i.error) for i in invalid] == [
        (n, r) for n, r in enumerate(expected) if isinstance(r, str)
    ]
    for item in invalid:
        assert orjson.loads(item.raw) == orjson.loads(orjson.dumps(elements[item.index]))


# --------------------------------------------------------------------------- round trip


@FAST
@given(st.data())
def test_valid_reading_round_trips(data):
    obj, expected = data.draw(valid_readings())
    value = dumps_variant(data.draw, obj)
    readings, invalid = validate_message(value, expected.device_id, WINDOW)
    assert invalid == []
    assert readings == [expected]
    assert list(readings[0].metrics) == list(obj["metrics"])
    assert validate_reading(obj, expected.device_id, WINDOW) == expected


@FAST
@given(st.data())
def test_array_of_valid_readings_round_trips(data):
    pairs = data.draw(st.lists(valid_readings("dev-1"), min_size=1, max_size=5))
    value = dumps_variant(data.draw, [obj for obj, _ in pairs])
    readings, invalid = validate_message(value, "dev-1", WINDOW)
    assert invalid == []
    assert readings == [expected for _, expected in pairs]


@FAST
@given(st.data())
def test_escaped_characters_do_not_change_a_valid_reading(data):
    obj, expected = data.draw(valid_readings())
    text = orjson.dumps(obj).decode()
    rnd = data.draw(st.randoms(use_true_random=False))
    # escape some characters inside strings as \\uXXXX (a valid JSON spelling of them)
    out = []
    in_string = False
    for ch in text:
        if ch == '"':
            in_string = not in_string
            out.append(ch)
        elif in_string and rnd.random() < 0.25:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    value = "".join(out).encode()
    assert validate_message(value, expected.device_id, WINDOW) == ([expected], [])


# --------------------------------------------------------------------------- duplicates


def encode_pairs(pairs: list[tuple[str, object]], draw) -> bytes:
    sep = draw(st.sampled_from([",", ", ", " ,\n"]))
    colon = draw(st.sampled_from([":", ": ", " : "]))
    return ("{" + sep.join(json.dumps(k) + colon + json.dumps(v) for k, v in pairs) + "}").encode()


@FAST
@given(st.data())
def test_duplicate_keys_anywhere_in_a_reading_make_it_invalid(data):
    obj, expected = data.draw(valid_readings("dev-1"))
    metrics = list(obj["metrics"].items())
    where = data.draw(st.sampled_from(["metrics", "top"]))
    if where == "metrics":
        name, value = data.draw(st.sampled_from(metrics))
        metrics.insert(data.draw(st.integers(0, len(metrics))), (name, value))
        metrics_text = encode_pairs(metrics, data.draw).decode()
        fields = [(k, v) for k, v in obj.items() if k != "metrics"]
        text = "{" + ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in fields)
        text += ',"metrics":' + metrics_text + "}"
        key = name
    else:
        key = data.draw(st.sampled_from(["device_id", "time", "metrics"]))
        pairs = list(obj.items()) + [(key, obj[key])]
        text = encode_pairs(pairs, data.draw).decode()
    good = orjson.dumps(obj).decode()
    position = data.draw(st.integers(0, 2))
    elements = [good, good]
    elements.insert(position, text)
    value = ("[" + ",".join(elements) + "]").encode()
    readings, invalid = validate_message(value, "dev-1", WINDOW)
    assert readings == [expected, expected]
    assert len(invalid) == 1
    assert invalid[0].index == position
    assert f"duplicate key {key!r}" in invalid[0].error
    assert invalid[0].raw == text.encode()


@FAST
@given(st.data())
def test_colon_count_finds_duplicates_exactly(data):
    """Random keys (colons, escapes and unicode included): a message is refused for a
    duplicate key exactly when two keys of one object decode to the same string."""
    keys = data.draw(
        st.lists(st.text(":a\\\"é\u2028 ", max_size=4) | st.sampled_from(["device_id", "time"]),
                 min_size=1, max_size=6)
    )
    pairs = [(k, data.draw(json_scalars | json_values)) for k in keys]
    value = encode_pairs(pairs, data.draw)
    readings, invalid = assert_well_formed(value, validate_message(value, None, WINDOW))
    has_duplicate = len(set(keys)) < len(keys)
    assert readings == []
    if has_duplicate:
        assert "duplicate key" in invalid[0].error
    else:
        assert invalid[0].error == validate_reading(dict(pairs), None, WINDOW)

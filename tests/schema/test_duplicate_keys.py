"""Unit and property tests of schema.duplicate_keys (no network, no stack).

How duplicate keys make readings invalid, through validate_message, is tested in
test_validation.py and test_validation_properties.py."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schema.duplicate_keys import (
    DuplicateKey,
    element_spans,
    key_tally,
    maybe_duplicates,
    scan_duplicates,
)
from schema.validation import Reading

KEY_CHARS = ":ab\\\"é "  # colons, escapes (backslash, quote) and non-ASCII
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(KEY_CHARS, max_size=5)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(KEY_CHARS, max_size=4), children, max_size=4),
    max_leaves=20,
)


def test_key_tally_counts_keys_and_colons_inside_strings_at_any_depth():
    assert key_tally({"a:b": "c:d", "x": [1, {"y": "z"}]}) == 5
    assert key_tally([[[{"k": "::"}]]]) == 3
    assert key_tally(1.5) == 0


def test_key_tally_is_iterative():
    doc: object = "a:b"
    for _ in range(100_000):
        doc = [doc]
    assert key_tally(doc) == 1


def test_maybe_duplicates_is_false_only_when_the_colon_count_balances():
    value = b'{"a":1,"b":"x:y"}'
    assert maybe_duplicates(value, 3, []) is False
    assert maybe_duplicates(b'{"a":1,"a":2}', 1, []) is True  # orjson kept one key
    assert maybe_duplicates(b'{"a\\u003a":1}', 1, []) is True  # an escape: never trusted


def test_maybe_duplicates_counts_metric_name_colons_of_valid_readings_last():
    reading = Reading("d", 0, {"a:b": 1.0, "c": 2.0})
    value = orjson.dumps({"device_id": "d", "time": 0, "metrics": reading.metrics})
    tally = 3 + len(reading.metrics)  # what validation counts for a valid reading
    assert maybe_duplicates(value, tally, [reading]) is False
    assert maybe_duplicates(value, tally, []) is True


def test_scan_of_an_object_names_the_path_of_its_first_duplicate():
    value = b'{"metrics":{"a":1,"a":2,"b":1,"b":2}}'
    assert scan_duplicates(value) == {
        None: DuplicateKey("metrics: duplicate key 'a'", 0, len(value))
    }
    value = b'{"m":[{"k":1,"k":2}]}'
    assert scan_duplicates(value) == {None: DuplicateKey("m.[]: duplicate key 'k'", 0, 21)}


def test_scan_of_an_array_gives_each_element_with_a_duplicate_and_its_bytes():
    bad = b'{"x":{"y":1,"y":2}}'
    value = b'[{"a":1}, ' + bad + b" ,3, " + bad + b"]"
    found = scan_duplicates(value)
    assert sorted(found) == [1, 3]
    for dup in found.values():
        assert dup.error == "x: duplicate key 'y'"
        assert value[dup.start : dup.end] == bad


def test_scan_finds_keys_equal_after_unescaping_and_ignores_keys_of_other_objects():
    assert scan_duplicates(b'{"a:":1,"a\\u003a":2}')[None].error == "duplicate key 'a:'"
    assert scan_duplicates(b'[{"a":1},{"a":1}]') == {}
    assert scan_duplicates(b'{"a":{"a":{"a":1}}}') == {}


def test_element_spans_of_a_top_level_array():
    value = b'[ 1 , "a" , {"b":[2]} , [ ] ]'
    spans = element_spans(value)
    assert [value[start:end] for start, end in spans] == [b"1", b'"a"', b'{"b":[2]}', b"[ ]"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(KEY_CHARS, max_size=4), json_values, max_size=5))
def test_a_document_without_duplicates_passes_both_checks(doc):
    for value in (orjson.dumps(doc), json.dumps(doc, indent=1).encode()):
        if b"\\" not in value:
            assert maybe_duplicates(value, key_tally(doc), []) is False
        assert scan_duplicates(value) == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(KEY_CHARS, max_size=3), min_size=2, max_size=5), st.data())
def test_a_repeated_key_is_found_by_both_checks(keys, data):
    keys.append(data.draw(st.sampled_from(keys)))
    value = ("{" + ",".join(f"{json.dumps(k)}:{i}" for i, k in enumerate(keys)) + "}").encode()
    doc = orjson.loads(value)
    assert maybe_duplicates(value, key_tally(doc), []) is True
    assert "duplicate key" in scan_duplicates(value)[None].error

"""Unit tests of schema.error_text (no network, no stack)."""

from __future__ import annotations

import orjson

from schema.error_text import JSON_TYPE_NAMES, got, json_error, json_type, show, typed


def test_show_is_a_short_repr_and_never_raises():
    assert show("abc") == "'abc'"
    assert len(show("x" * 10_000)) <= 80
    assert show(list(range(100))) == "[0, 1, 2, 3, ...]"
    assert show(10**5000) != ""  # over the int -> str digit limit: no exception


def test_json_type_names_decoded_values_and_falls_back_to_the_python_type():
    assert [json_type(v) for v in ({}, [], "", 1, 1.0, True, None)] == [
        "object", "array", "string", "integer", "number", "boolean", "null",
    ]
    assert json_type(b"") == "bytes"
    assert set(JSON_TYPE_NAMES.values()) >= {"object", "array", "null"}


def test_typed_and_got_spell_null_and_booleans_as_json():
    assert [typed(v) for v in (None, True, False)] == ["null", "true", "false"]
    assert [got(v) for v in (None, True, False)] == ["null", "true", "false"]
    assert typed([1, 2]) == "array [1, 2]"
    assert got([1, 2]) == "[1, 2]"
    assert typed(1) == "integer 1"  # 1 == True, but it is no boolean


def test_json_error_tells_bad_utf8_from_bad_json():
    for value, expected in [
        (b'{"a":"\xff"}', "message is not valid UTF-8 (byte 6: b'\\xff\"}')"),
        (b"{", "invalid JSON: "),
        (b"\xef\xbb\xbf{}", "invalid JSON: "),  # a byte-order mark is bad JSON, not bad UTF-8
    ]:
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            assert json_error(value, exc).startswith(expected), json_error(value, exc)
        else:
            raise AssertionError(f"orjson accepted {value!r}")


def test_json_error_text_is_bounded():
    assert len(json_error(b"x", ValueError("e" * 1000))) <= len("invalid JSON: ") + 160

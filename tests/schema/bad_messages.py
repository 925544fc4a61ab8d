"""A corpus of bad Kafka message values, reusable by any test of the pipeline.

``BAD_MESSAGES``: (name, value bytes, expected error substring). Each value, published on the
topic of ``DEVICE_ID`` (``TOPIC``), is exactly one invalid reading and no valid reading:
validate_message(value, DEVICE_ID, window) gives ([], [one InvalidReading]) whose error
contains the substring. Its ``index`` is None, except for the entries named ``array_of_*``
that are a one-element array (index 0).

``MIXED_ARRAYS``: (name, value bytes, number of valid readings, {index: error substring})
for array messages mixing valid and invalid readings.

Times inside the values are relative to the moment this module is imported (``NOW``): use
them with a validation window around the real current time and the default retention
(90 days), within a few minutes of importing. ``make_bad_messages(now)`` and
``make_mixed_arrays(now)`` build the same lists for another "now".
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson

DEVICE_ID = "sensor-001"
TOPIC = f"device-data-{DEVICE_ID}"
RETENTION = timedelta(days=90)
NOW = datetime.now(timezone.utc)

MIB = 1_048_576


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reading(now: datetime, **fields: object) -> dict:
    """A valid reading of DEVICE_ID one minute before ``now``; ``fields`` override/add."""
    obj: dict = {
        "device_id": DEVICE_ID,
        "time": rfc3339(now - timedelta(minutes=1)),
        "metrics": {"temperature": 21.4, "humidity": 38.0},
    }
    obj.update(fields)
    return obj


def without(obj: dict, field: str) -> dict:
    return {k: v for k, v in obj.items() if k != field}


def make_bad_messages(now: datetime) -> list[tuple[str, bytes, str]]:
    t = rfc3339(now - timedelta(minutes=1)).encode()

    def enc(obj: object) -> bytes:
        return orjson.dumps(obj)

    def text(metrics: str = '{"temperature":21.4}', time: bytes = b'"' + t + b'"',
             device: str = f'"{DEVICE_ID}"') -> bytes:
        return (
            b'{"device_id":' + device.encode() + b',"time":' + time + b',"metrics":'
            + metrics.encode() + b"}"
        )

    valid = enc(reading(now))
    small = enc(reading(now, metrics={"t": 1}))
    over_mib = valid[:-1] + b" " * (MIB + 1 - len(valid)) + b"}"
    assert len(over_mib) == MIB + 1
    many = b"[" + b",".join([small] * 100_000) + b"]"
    assert len(many) > MIB

    return [
        # --- not JSON at all, or broken JSON
        ("empty_bytes", b"", "empty message"),
        ("whitespace_only", b" \t\r\n ", "invalid JSON"),
        ("truncated_object", valid[: len(valid) // 2], "invalid JSON"),
        ("truncated_array", b"[" + valid, "invalid JSON"),
        ("trailing_garbage", valid + b"x", "invalid JSON"),
        ("two_documents", valid + b" " + valid, "invalid JSON"),
        ("trailing_comma", valid[:-2] + b",}}", "invalid JSON"),
        ("single_quotes", valid.replace(b'"', b"'"), "invalid JSON"),
        ("unquoted_keys", b'{device_id:"sensor-001"}', "invalid JSON"),
        ("comment", b"// a reading\n" + valid, "invalid JSON"),
        ("literal_newline_in_string", text(device='"sensor\n001"'), "invalid JSON"),
        ("invalid_escape", text(device='"sensor\\x001"'), "invalid JSON"),
        ("lone_surrogate_escape", text(device='"sensor\\ud800"'), "invalid JSON"),
        ("deep_array_nesting_100k", b"[" * 100_000 + b"]" * 100_000, "depth"),
        ("deep_object_nesting_100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "depth"),
        ("deep_nesting_in_metric", text(metrics='{"a":' + "[" * 5000 + "]" * 5000 + "}"), "depth"),
        ("nan_literal", text(metrics='{"temperature":NaN}'), "invalid JSON"),
        ("infinity_literal", text(metrics='{"temperature":Infinity}'), "invalid JSON"),
        ("minus_infinity_literal", text(metrics='{"temperature":-Infinity}'), "invalid JSON"),
        ("float_overflowing_to_infinity", text(metrics='{"temperature":1e400}'), "invalid JSON"),
        ("huge_integer_400_digits", text(metrics='{"temperature":1' + "0" * 400 + "}"),
         "invalid JSON"),
        ("non_utf8_bytes", text(device='"sensor-\xff"').replace(b"\xc3\xbf", b"\xff"),
         "not valid UTF-8"),
        ("latin1_encoded_text", text(device='"capteur-\xe9"').replace(b"\xc3\xa9", b"\xe9"),
         "not valid UTF-8"),
        ("utf16_encoded", valid.decode().encode("utf-16"), "not valid UTF-8"),
        ("utf8_bom_prefix", b"\xef\xbb\xbf" + valid, "BOM"),
        ("nul_byte", b"\x00" + valid, "invalid JSON"),
        # --- duplicate keys
        ("duplicate_top_level_key", text(time=b'"' + t + b'","time":"' + t + b'"'),
         "duplicate key 'time'"),
        ("duplicate_metric", text(metrics='{"temperature":21.4,"temperature":99}'),
         "metrics: duplicate key 'temperature'"),
        ("duplicate_metric_spaced", text(metrics='{ "a" : 1 ,\n "a" : 1 }'),
         "metrics: duplicate key 'a'"),
        ("duplicate_metric_via_escape",
         text(metrics='{"temperature":21.4,"temp\\u0065rature":99}'),
         "metrics: duplicate key 'temperature'"),
        ("duplicate_device_id_key", text(device=f'"{DEVICE_ID}","device_id":"sensor-002"'),
         "duplicate key 'device_id'"),
        # --- message shape
        ("empty_array", b"[]", "empty array"),
        ("empty_array_with_spaces", b" [ ] ", "empty array"),
        ("json_number", b"42", "must be a reading object or an array"),
        ("json_string", b'"sensor-001"', "must be a reading object or an array"),
        ("json_null", b"null", "must be a reading object or an array"),
        ("json_true", b"true", "must be a reading object or an array"),
        ("empty_object", b"{}", "missing fields"),
        ("wrapped_reading", enc({"reading": reading(now)}), "missing fields"),
        ("array_of_one_number", b"[1]", "reading must be a JSON object"),
        ("array_of_one_empty_array", b"[[]]", "reading must be a JSON object, got array"),
        ("array_of_array_of_reading", b"[[" + valid + b"]]", "reading must be a JSON object"),
        ("array_of_one_null", b"[null]", "reading must be a JSON object, got null"),
        ("over_1_mib", over_mib, "over the 1 MiB limit"),
        ("array_of_100k_readings", many, "over the 1 MiB limit"),
        # --- fields
        ("missing_device_id", enc(without(reading(now), "device_id")), "missing field 'device_id'"),
        ("missing_time", enc(without(reading(now), "time")), "missing field 'time'"),
        ("missing_metrics", enc(without(reading(now), "metrics")), "missing field 'metrics'"),
        ("extra_field", enc(reading(now, unit="C")), "unknown field 'unit'"),
        ("timestamp_instead_of_time",
         enc({**without(reading(now), "time"), "timestamp": rfc3339(now)}), "missing field 'time'"),
        # --- device_id
        ("device_id_of_another_device", enc(reading(now, device_id="sensor-002")),
         "does not match the topic"),
        ("device_id_differs_in_case", enc(reading(now, device_id="SENSOR-001")),
         "does not match the topic"),
        ("device_id_empty", enc(reading(now, device_id="")), "device_id: must be 1-128"),
        ("device_id_129_chars", enc(reading(now, device_id="s" * 129)), "device_id: must be"),
        ("device_id_unicode", enc(reading(now, device_id="sénsor-001")), "device_id: must be"),
        ("device_id_fullwidth_digits", enc(reading(now, device_id="sensor-００１")),
         "device_id: must be"),
        ("device_id_control_char", enc(reading(now, device_id="sensor-001\n")),
         "device_id: must be"),
        ("device_id_with_space", enc(reading(now, device_id="sensor 001")), "device_id: must be"),
        ("device_id_with_slash", enc(reading(now, device_id="sensor/001")), "device_id: must be"),
        ("device_id_number", enc(reading(now, device_id=1)), "device_id: must be a string"),
        ("device_id_null", enc(reading(now, device_id=None)),
         "device_id: must be a string, got null"),
        # --- time
        ("time_far_in_the_past", enc(reading(now, time="1970-01-01T00:00:00Z")),
         "older than the retention period"),
        ("time_just_older_than_retention",
         enc(reading(now, time=rfc3339(now - RETENTION - timedelta(minutes=5)))),
         "older than the retention period"),
        ("time_far_in_the_future", enc(reading(now, time="2999-01-01T00:00:00Z")),
         "more than 5 minutes in the future"),
        ("time_ten_minutes_ahead", enc(reading(now, time=rfc3339(now + timedelta(minutes=10)))),
         "more than 5 minutes in the future"),
        ("epoch_ms_far_in_the_future", enc(reading(now, time=32503680000000)),
         "more than 5 minutes in the future"),
        ("epoch_seconds_instead_of_ms",
         enc(reading(now, time=int(now.timestamp()))), "older than the retention period"),
        ("time_without_zone", enc(reading(now, time=rfc3339(now)[:-1])), "missing time zone"),
        ("time_without_seconds", enc(reading(now, time=rfc3339(now)[:16])), "missing time zone"),
        ("time_date_only", enc(reading(now, time=rfc3339(now)[:10])), "time: must be an RFC 3339"),
        ("time_week_date", enc(reading(now, time="2026-W48-6T17:00:00Z")),
         "time: must be an RFC 3339"),
        ("time_ordinal_date", enc(reading(now, time="2026-332T17:00:00Z")),
         "time: must be an RFC 3339"),
        ("time_basic_format", enc(reading(now, time="20261128T170000Z")),
         "time: must be an RFC 3339"),
        ("time_offset_without_colon", enc(reading(now, time="2026-11-28T17:00:00+0100")),
         "time: must be an RFC 3339"),
        ("time_named_zone", enc(reading(now, time="2026-11-28T17:00:00 UTC")),
         "time: must be an RFC 3339"),
        ("time_with_fullwidth_digits", enc(reading(now, time="２０２６-11-28T17:00:00Z")),
         "time: must be an RFC 3339"),
        ("time_empty_fraction", enc(reading(now, time="2026-11-28T17:00:00.Z")),
         "time: must be an RFC 3339"),
        ("time_leap_second", enc(reading(now, time="2016-12-31T23:59:60Z")), "leap second"),
        ("time_hour_24", enc(reading(now, time="2026-11-28T24:00:00Z")), "out of range"),
        ("time_february_30", enc(reading(now, time="2026-02-30T12:00:00Z")), "invalid date"),
        ("time_year_zero", enc(reading(now, time="0000-01-01T00:00:00Z")), "invalid date"),
        ("time_year_9999_west_of_utc", enc(reading(now, time="9999-12-31T23:59:59-01:00")),
         "out of range"),
        ("time_offset_hours_24", enc(reading(now, time="2026-11-28T17:00:00+24:00")),
         "zone offset out of range"),
        ("time_bool", enc(reading(now, time=True)), "time: must be an RFC 3339"),
        ("time_null", enc(reading(now, time=None)), "got null"),
        ("time_float_epoch", enc(reading(now, time=now.timestamp() * 1000)),
         "epoch milliseconds must be an integer"),
        ("time_integral_float_epoch", text(time=b"%d.0" % int(now.timestamp() * 1000)),
         "epoch milliseconds must be an integer"),
        ("time_integer_beyond_64_bits", text(time=b"123456789012345678901"),
         "epoch milliseconds must be an integer"),
        ("time_epoch_ms_out_of_datetime_range", enc(reading(now, time=-9_000_000_000_000_000)),
         "out of range"),
        ("time_epoch_ms_as_string", enc(reading(now, time=str(int(now.timestamp() * 1000)))),
         "time: must be an RFC 3339"),
        ("time_object", enc(reading(now, time={"seconds": 1})), "time: must be an RFC 3339"),
        # --- metrics
        ("metrics_empty", enc(reading(now, metrics={})), "must have 1 to 1000 entries, got 0"),
        ("metrics_1001", enc(reading(now, metrics={f"m{i}": i for i in range(1001)})),
         "must have 1 to 1000 entries, got 1001"),
        ("metrics_array", enc(reading(now, metrics=[21.4])), "metrics: must be an object"),
        ("metrics_null", enc(reading(now, metrics=None)), "metrics: must be an object, got null"),
        ("metrics_number", enc(reading(now, metrics=21.4)), "metrics: must be an object"),
        ("metric_name_empty", enc(reading(now, metrics={"": 1})), "invalid metric name ''"),
        ("metric_name_starts_with_digit", enc(reading(now, metrics={"1temp": 1})),
         "invalid metric name '1temp'"),
        ("metric_name_starts_with_dash", enc(reading(now, metrics={"-temp": 1})),
         "invalid metric name"),
        ("metric_name_129_chars", enc(reading(now, metrics={"m" * 129: 1})),
         "invalid metric name"),
        ("metric_name_unicode", enc(reading(now, metrics={"température": 1})),
         "invalid metric name"),
        ("metric_name_control_char", enc(reading(now, metrics={"temp\u0000": 1})),
         "invalid metric name"),
        ("metric_name_with_space", enc(reading(now, metrics={"air temp": 1})),
         "invalid metric name"),
        ("metric_value_null", enc(reading(now, metrics={"temperature": None})),
         "metrics.temperature: value must be a finite number, got null"),
        ("metric_value_string", enc(reading(now, metrics={"temperature": "hot"})),
         "metrics.temperature: value must be a finite number, got 'hot'"),
        ("metric_value_numeric_string", enc(reading(now, metrics={"temperature": "21.4"})),
         "value must be a finite number"),
        ("metric_value_object", enc(reading(now, metrics={"temperature": {"value": 21.4}})),
         "value must be a finite number"),
        ("metric_value_array", enc(reading(now, metrics={"temperature": [21.4]})),
         "value must be a finite number"),
        ("one_bad_metric_among_good_ones",
         enc(reading(now, metrics={"a": 1, "b": 2, "c": "x", "d": 4})),
         "metrics.c: value must be a finite number"),
    ]


def make_mixed_arrays(now: datetime) -> list[tuple[str, bytes, int, dict[int, str]]]:
    def enc(obj: object) -> bytes:
        return orjson.dumps(obj)

    good = reading(now)
    t = rfc3339(now - timedelta(minutes=1))
    return [
        ("bad_metric_between_good_readings",
         enc([good, reading(now, metrics={"a": "x"}), good]), 2,
         {1: "value must be a finite number"}),
        ("non_objects_in_array", enc([1, good, [], None, "x", good]), 2,
         {0: "got integer 1", 2: "got array", 3: "got null", 4: "got string"}),
        ("other_device_in_array", enc([good, reading(now, device_id="sensor-002")]), 1,
         {1: "does not match the topic"}),
        ("too_old_and_too_new_in_array",
         enc([reading(now, time="2000-01-01T00:00:00Z"), good,
              reading(now, time="2999-01-01T00:00:00Z")]), 1,
         {0: "older than the retention", 2: "in the future"}),
        ("duplicate_key_in_one_element",
         b"[" + enc(good) + b',{"device_id":"' + DEVICE_ID.encode() + b'","time":"'
         + t.encode() + b'","metrics":{"a":1,"a":2}},' + enc(good) + b"]", 2,
         {1: "metrics: duplicate key 'a'"}),
        ("all_invalid", enc([{}, {"device_id": DEVICE_ID}]), 0,
         {0: "missing fields", 1: "missing fields"}),
    ]


BAD_MESSAGES = make_bad_messages(NOW)
MIXED_ARRAYS = make_mixed_arrays(NOW)

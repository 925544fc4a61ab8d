"""Parameter checking of the device query routes (no network)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from multidict import MultiDict

from streams.settings import Settings
from web.errors import ClientError
from web.queries import (
    aggregates_copy_sql,
    check_device,
    check_limit,
    check_metric,
    check_params,
    check_range,
    parse_time,
    pick_resolution,
    read_connect_kwargs,
    read_route,
)

NOW = datetime(2026, 11, 28, 17, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def _bad(call, *args) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args)
    assert caught.value.status == 400
    return str(caught.value)


def test_times_are_rfc3339_with_a_zone_and_come_back_in_utc() -> None:
    assert parse_time("start", "2026-11-28T17:00:00Z") == NOW
    assert parse_time("start", "2026-11-28T18:00:00.5+01:00") == NOW + timedelta(seconds=0.5)
    # "+01:00" sent unencoded in a query string arrives as " 01:00"
    assert parse_time("start", "2026-11-28T18:00:00 01:00") == NOW
    assert "missing time zone" in _bad(parse_time, "start", "2026-11-28T17:00:00")
    for bad in ("yesterday", "1764349200000", "2026-11-28", "2026-13-01T00:00:00Z",
                "2026-11-28T24:00:00Z", "2026-02-30T00:00:00Z", ""):
        assert _bad(parse_time, "end", bad).startswith("end: ")


def test_range_defaults_order_and_maximum() -> None:
    day = timedelta(days=1)
    assert check_range({}, NOW, HOUR, day, "x") == (NOW - HOUR, NOW)
    assert check_range({"start": "2026-11-28T16:30:00Z"}, NOW, HOUR, day, "x") == (
        NOW - HOUR / 2, NOW)
    assert check_range({"end": "2026-11-28T12:00:00Z"}, NOW, HOUR, day, "x") == (
        NOW - 6 * HOUR, NOW - 5 * HOUR)
    assert "start must be before end" in _bad(
        check_range, {"start": "2026-11-28T17:00:00Z", "end": "2026-11-28T17:00:00Z"},
        NOW, HOUR, day, "x")
    assert "range too long for raw readings: 2 days > 1 days" in _bad(
        check_range, {"start": "2026-11-26T17:00:00Z", "end": "2026-11-28T17:00:00Z"},
        NOW, HOUR, day, "raw readings")
    # no maximum (aggregates)
    assert check_range({"start": "2025-11-28T17:00:00Z"}, NOW, HOUR, None, "x")[0].year == 2025


def test_a_default_bound_past_the_calendar_stops_at_its_edge() -> None:
    """The other bound of a range given by one near year 1 or 9999 (a 500 before)."""
    late = check_range({"start": "9999-12-31T23:30:00Z"}, NOW, HOUR, HOUR, "x")
    assert late == (datetime(9999, 12, 31, 23, 30, tzinfo=timezone.utc),
                    datetime.max.replace(tzinfo=timezone.utc))
    early = check_range({"end": "0001-01-01T00:30:00Z"}, NOW, HOUR, HOUR, "x")
    assert early == (datetime.min.replace(tzinfo=timezone.utc),
                     datetime(1, 1, 1, 0, 30, tzinfo=timezone.utc))


def test_limit_is_a_whole_number_within_the_maximum() -> None:
    assert check_limit({}, 1000, 10_000) == 1000
    assert check_limit({}, 1000, 10) == 10
    assert check_limit({"limit": "10000"}, 1000, 10_000) == 10_000
    for bad in ("0", "10001", "-1", "1.5", "ten", "", "١٢"):
        assert "limit must be" in _bad(check_limit, {"limit": bad}, 1000, 10_000)


def test_device_and_metric_follow_the_message_rules() -> None:
    assert check_device("sensor-001.a_b") == "sensor-001.a_b"
    for bad in ("", "a/b", "a b", "x" * 129, "é"):
        assert "device id" in _bad(check_device, bad)
    assert check_metric({"metric": "temp:c"}) == "temp:c"
    assert check_metric({}) is None
    for bad in ("1temp", "a b", "x" * 129):
        assert "metric must be" in _bad(check_metric, {"metric": bad})


def test_unknown_and_repeated_parameters_are_refused() -> None:
    allowed = ("metric", "start")
    assert check_params(MultiDict(metric="t"), allowed) == {"metric": "t"}
    assert "unknown parameter(s) limt" in _bad(check_params, MultiDict(limt="5"), allowed)
    assert "metric given 2 times" in _bad(
        check_params, MultiDict([("metric", "a"), ("metric", "b")]), allowed)


def test_resolution_follows_the_range_raw_then_1m_then_1h() -> None:
    assert pick_resolution(NOW - 2 * HOUR, NOW) == "raw"
    assert pick_resolution(NOW - 2 * HOUR - timedelta(seconds=1), NOW) == "1m"
    assert pick_resolution(NOW - timedelta(days=3), NOW) == "1m"
    assert pick_resolution(NOW - timedelta(days=3, seconds=1), NOW) == "1h"
    # never raw beyond the raw maximum
    assert pick_resolution(NOW - 2 * HOUR, NOW, raw_max_range=HOUR) == "1m"


def test_read_pools_have_no_statement_cache_and_the_query_timeout() -> None:
    settings = Settings.from_env({"DB_STATEMENT_CACHE": "true", "QUERY_TIMEOUT": "3"})
    replica = read_connect_kwargs(settings, "replica.internal", 5433, "devicestream")
    assert (replica["host"], replica["port"], replica["statement_cache_size"],
            replica["command_timeout"]) == ("replica.internal", 5433, 0, 3.0)
    assert replica["database"] == "devicestream"


def test_the_replica_pool_reads_the_database_named_by_read_db_name() -> None:
    # pgBouncer's read entry: same host and port as the writes, another database name.
    route = read_route(Settings.from_env({"DB_HOST": "pgbouncer", "READ_DB_NAME": "ds_read"}))
    assert route.replica is not None
    assert {target: (kwargs["host"], kwargs["port"], kwargs["database"])
            for target, kwargs in route._kwargs.items()} == {
        "replica": ("pgbouncer", 6432, "ds_read"), "primary": ("pgbouncer", 6432, "devicestream")}


def test_without_read_settings_every_read_goes_to_the_primary() -> None:
    route = read_route(Settings.from_env({"DB_NAME": "other"}))
    assert route.replica is None and set(route._kwargs) == {"primary"}
    assert route._kwargs["primary"]["database"] == "other"


def test_aggregate_literals_are_quoted() -> None:
    sql = aggregates_copy_sql("readings_1h", "dev'ice", "m'", NOW - HOUR, NOW, 11)
    assert "s.device_id = 'dev''ice'" in sql and "s.metric = 'm'''" in sql
    assert "'2026-11-28T16:00:00+00:00'::timestamptz" in sql and "LIMIT 11" in sql
    assert "s.metric =" not in aggregates_copy_sql("readings_1m", "d", None, NOW - HOUR, NOW, 1)

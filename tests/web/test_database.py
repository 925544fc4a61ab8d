"""Shaping the database sample (no database needed)."""
from __future__ import annotations

import orjson

from web.database import (
    STATS_TAG,
    TOP_STATEMENTS_QUERY,
    cache_hit_ratio,
    compression_state,
    pgbouncer_report,
    pool_usage,
)

READINGS = {"schema": "public", "name": "readings", "compression_enabled": True,
            "chunks": 10, "compressed_chunks": 7}
DEVICES_1M = {"schema": "public", "name": "readings_1m", "compression_enabled": False,
              "chunks": 2, "compressed_chunks": 0}


def test_cache_hit_ratio() -> None:
    assert cache_hit_ratio(99, 1) == 0.99
    assert cache_hit_ratio(0, 0) is None
    assert cache_hit_ratio(None, None) is None


def test_compression_is_unavailable_on_the_apache_build() -> None:
    assert compression_state("apache", "2.19.3", [READINGS]) == {
        "state": "unavailable: apache build"}
    assert compression_state(None, None, []) == {
        "state": "unavailable: timescaledb not installed"}


def test_compression_progress_per_hypertable_on_the_timescale_license() -> None:
    state = compression_state(
        "timescale", "2.19.3", [READINGS, DEVICES_1M],
        stats=[{"schema": "public", "name": "readings", "before_bytes": 1000,
                "after_bytes": 100}],
        policies=[{"schema": "public", "name": "readings",
                   "config": orjson.dumps({"compress_after": "7 days"}).decode()}],
    )
    assert state["state"] == "enabled"
    assert state["hypertables"]["public.readings"] == {
        "enabled": True, "chunks": 10, "compressed_chunks": 7, "before_bytes": 1000,
        "after_bytes": 100, "policy_compress_after": "7 days"}
    assert state["hypertables"]["public.readings_1m"]["enabled"] is False
    assert state["hypertables"]["public.readings_1m"]["policy_compress_after"] is None
    assert compression_state("timescale", "2.19.3", [DEVICES_1M])["state"] == "disabled"


def test_pgbouncer_rows_leave_out_the_admin_console_itself() -> None:
    pools = [{"database": "devicestream", "cl_active": 2}, {"database": "pgbouncer"}]
    stats = [{"database": "pgbouncer"}, {"database": "devicestream", "total_xact_count": 1}]
    assert pgbouncer_report(pools, stats) == {
        "pools": [{"database": "devicestream", "cl_active": 2}],
        "stats": [{"database": "devicestream", "total_xact_count": 1}]}


class FakePool:
    def __init__(self, size: int, idle: int, maximum: int) -> None:
        self.size, self.idle, self.maximum = size, idle, maximum

    def get_size(self) -> int:
        return self.size

    def get_idle_size(self) -> int:
        return self.idle

    def get_max_size(self) -> int:
        return self.maximum


def test_pool_usage() -> None:
    assert pool_usage({"ingest": FakePool(3, 1, 4)}) == {
        "ingest": {"size": 3, "idle": 1, "in_use": 2, "max": 4}}


def test_our_own_statements_are_tagged_and_left_out_of_the_top_statements() -> None:
    assert STATS_TAG.strip("/* ").strip(" */") in TOP_STATEMENTS_QUERY
    assert "NOT LIKE '%devicestream-stats%'" in TOP_STATEMENTS_QUERY


def test_hypertables_get_their_chunk_figures() -> None:
    from datetime import datetime, timezone

    from web.database import with_chunks

    day = lambda d: datetime(2026, 11, d, tzinfo=timezone.utc)  # noqa: E731
    tables = [{"schema": "public", "name": "readings", "total_bytes": 600},
              {"schema": "public", "name": "empty", "total_bytes": 8}]
    chunks = [
        {"schema": "public", "name": "readings", "chunk_name": "c1", "range_start": day(1),
         "range_end": day(2), "is_compressed": True, "total_bytes": 400},
        {"schema": "public", "name": "readings", "chunk_name": "c2", "range_start": day(2),
         "range_end": day(3), "is_compressed": False, "total_bytes": 200},
    ]
    readings, empty = with_chunks(tables, chunks)
    assert readings["chunks"] == 2 and readings["compressed_chunks"] == 1
    assert readings["largest_chunk_bytes"] == 400
    assert readings["newest_chunk"] == {"name": "c2", "range_start": "2026-11-02T00:00:00+00:00",
                                        "range_end": "2026-11-03T00:00:00+00:00",
                                        "total_bytes": 200}
    assert empty["chunks"] == 0 and empty["newest_chunk"] is None
    assert empty["largest_chunk_bytes"] is None

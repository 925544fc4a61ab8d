"""Shaping the database sample (no database needed)."""
from __future__ import annotations

from web.database import (
    STATS_TAG,
    TOP_STATEMENTS_QUERY,
    cache_hit_ratio,
    pgbouncer_report,
    pool_usage,
)


def test_cache_hit_ratio() -> None:
    assert cache_hit_ratio(99, 1) == 0.99
    assert cache_hit_ratio(0, 0) is None
    assert cache_hit_ratio(None, None) is None


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

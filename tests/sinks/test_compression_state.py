"""The compression state and its two views, the maintenance report's and /pipeline/db's
(no database needed; tests/sinks/test_maintenance*.py and tests/web/
test_database_integration.py read the real one)."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import asyncpg
import pytest

from sinks.compression_state import (
    COMPRESSION_STATS,
    HYPERTABLES,
    SERVER,
    CompressionState,
    HypertableCompression,
    read_compression_state,
)

READINGS = {"name": "storage.readings", "compression_enabled": True, "segmentby": "series_id",
            "orderby": '"time" DESC', "chunks": 10, "compressed_chunks": 7,
            "compress_after": "7 days", "drop_after": "90 days"}
READINGS_1M = {"name": "storage.readings_1m", "compression_enabled": False, "segmentby": None,
               "orderby": None, "chunks": 2, "compressed_chunks": 0, "compress_after": None,
               "drop_after": "365 days"}
STATS = [{"name": "storage.readings", "before_bytes": 1000, "after_bytes": 100}]


def test_compression_is_unavailable_without_timescaledb_or_on_the_apache_build() -> None:
    apache = CompressionState.from_rows("apache", "2.19.3", [READINGS])
    assert apache.as_pipeline_db() == {"state": "unavailable: apache build"}
    assert CompressionState(None, None).as_pipeline_db() == {
        "state": "unavailable: timescaledb not installed"}
    assert CompressionState(None, "2.19.3").as_pipeline_db() == {
        "state": "unavailable: timescaledb not loaded"}


def test_pipeline_db_shows_progress_per_hypertable_on_the_timescale_license() -> None:
    state = CompressionState.from_rows("timescale", "2.19.3", [READINGS, READINGS_1M], STATS)
    shown = state.as_pipeline_db()
    assert shown["state"] == "enabled" and shown["license"] == "timescale"
    assert shown["hypertables"]["storage.readings"] == {
        "enabled": True, "chunks": 10, "compressed_chunks": 7, "before_bytes": 1000,
        "after_bytes": 100, "policy_compress_after": "7 days"}
    assert shown["hypertables"]["storage.readings_1m"] == {
        "enabled": False, "chunks": 2, "compressed_chunks": 0, "before_bytes": None,
        "after_bytes": None, "policy_compress_after": None}
    assert "errors" not in shown
    only_1m = CompressionState.from_rows("timescale", "2.19.3", [READINGS_1M])
    assert only_1m.as_pipeline_db()["state"] == "disabled"


def test_pipeline_db_lists_the_parts_that_failed() -> None:
    state = CompressionState.from_rows("timescale", "2.19.3", [READINGS], [],
                                       ["QueryCanceledError: timeout"])
    assert state.as_pipeline_db()["errors"] == ["QueryCanceledError: timeout"]
    assert state.as_pipeline_db()["hypertables"]["storage.readings"]["before_bytes"] is None


def test_maintenance_report_has_each_hypertables_settings_and_policies() -> None:
    state = CompressionState.from_rows("timescale", "2.19.3", [READINGS, READINGS_1M], STATS)
    report = state.as_maintenance_report()
    assert report == {
        "license": "timescale", "available": True, "state": "partly enabled",
        "hypertables": {
            "storage.readings": {
                "compression_enabled": True, "segmentby": "series_id",
                "orderby": '"time" DESC', "chunks": 10, "compressed_chunks": 7,
                "compress_after": "7 days", "drop_after": "90 days",
                "before_bytes": 1000, "after_bytes": 100},
            "storage.readings_1m": {
                "compression_enabled": False, "segmentby": None, "orderby": None,
                "chunks": 2, "compressed_chunks": 0, "compress_after": None,
                "drop_after": "365 days"},
        }}


def test_maintenance_state_says_whether_every_hypertable_is_set_up() -> None:
    def state(*rows: dict[str, Any]) -> str:
        return CompressionState.from_rows("timescale", "2.19.3", rows).as_maintenance_report()[
            "state"]

    no_policy = {**READINGS, "compress_after": None}
    assert state(READINGS, {**READINGS_1M, "compression_enabled": True,
                            "compress_after": "7 days"}) == "enabled"
    assert state(READINGS, READINGS_1M) == "partly enabled"
    assert state(no_policy, READINGS_1M) == "not enabled yet"
    assert state() == "not enabled yet"


def test_maintenance_report_where_compression_is_unavailable() -> None:
    apache = CompressionState.from_rows("apache", "2.19.3", [READINGS]).as_maintenance_report()
    assert (apache["license"], apache["available"], apache["state"]) == (
        "apache", False, "unavailable: apache build")
    assert "before_bytes" not in apache["hypertables"]["storage.readings"]
    assert CompressionState(None, "2.19.3").as_maintenance_report() == {
        "license": None, "available": False, "state": "unavailable: timescaledb not loaded",
        "hypertables": {}}


def test_hypertable_entries_default_to_unknown() -> None:
    table = HypertableCompression("storage.readings", True)
    assert (table.chunks, table.compress_after, table.before_bytes) == (None, None, None)


class FakeConnection:
    """Answers the three statements; ``fail`` names the ones that raise."""

    def __init__(self, license_: str | None, version: str | None,
                 fail: tuple[str, ...] = ()) -> None:
        self.license, self.version, self.fail = license_, version, fail
        self.statements: list[str] = []
        self.transactions: list[bool] = []

    @asynccontextmanager
    async def _transaction(self, readonly: bool) -> AsyncIterator[None]:
        self.transactions.append(readonly)
        yield

    def transaction(self, readonly: bool = False) -> Any:
        return self._transaction(readonly)

    async def fetchrow(self, sql: str, timeout: float | None = None) -> dict[str, Any]:
        self.statements.append(sql)
        assert sql.endswith(SERVER)
        return {"license": self.license, "version": self.version}

    async def fetch(self, sql: str, timeout: float | None = None) -> list[dict[str, Any]]:
        self.statements.append(sql)
        for name, query, rows in (("hypertables", HYPERTABLES, [READINGS, READINGS_1M]),
                                  ("stats", COMPRESSION_STATS, STATS)):
            if sql.endswith(query):
                if name in self.fail:
                    raise asyncpg.QueryCanceledError("canceling statement due to timeout")
                return rows
        raise AssertionError(sql)


async def read(conn: FakeConnection, **kwargs: Any) -> CompressionState:
    return await read_compression_state(conn, **kwargs)  # type: ignore[arg-type]


async def test_the_reader_reads_sizes_only_where_compression_is_available() -> None:
    conn = FakeConnection("timescale", "2.19.3")
    state = await read(conn, tag="/* t */")
    assert state == CompressionState.from_rows("timescale", "2.19.3",
                                               [READINGS, READINGS_1M], STATS)
    assert len(conn.statements) == 3 and all(s.startswith("/* t */") for s in conn.statements)
    assert conn.transactions == [True]

    apache = FakeConnection("apache", "2.19.3")
    assert (await read(apache)).hypertables[0].before_bytes is None
    assert len(apache.statements) == 2  # the sizes' functions refuse the Apache build

    for missing in (FakeConnection("timescale", None), FakeConnection(None, "2.19.3")):
        assert (await read(missing)).hypertables == ()
        assert len(missing.statements) == 1


async def test_the_reader_raises_or_reports_a_failing_part() -> None:
    with pytest.raises(asyncpg.QueryCanceledError):
        await read(FakeConnection("timescale", "2.19.3", fail=("stats",)))
    conn = FakeConnection("timescale", "2.19.3", fail=("stats",))
    state = await read(conn, on_error=lambda exc: type(exc).__name__)
    assert state.errors == ("QueryCanceledError",)
    assert [t.name for t in state.hypertables] == ["storage.readings", "storage.readings_1m"]
    assert conn.transactions == [True, False, False]  # each part in a savepoint of its own
    failed = await read(FakeConnection("timescale", "2.19.3", fail=("hypertables",)),
                        on_error=lambda exc: "failed")
    assert failed.as_pipeline_db() == {"state": "disabled", "license": "timescale",
                                       "hypertables": {}, "errors": ["failed"]}

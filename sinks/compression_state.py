"""The compression state of the storage hypertables: read once, shown by maintenance and
``/pipeline/db``.

:func:`read_compression_state` reads, read-only and cheaply, the TimescaleDB license and
version, each storage hypertable's compression settings, chunk counts, compression and
retention policies, and (where compression is available) its sizes before and after
compression. :class:`CompressionState` holds that and decides:

* availability: compression needs TimescaleDB installed in the database, loaded, and under
  the Timescale license; otherwise the state is ``"unavailable: timescaledb not installed"``,
  ``"unavailable: timescaledb not loaded"`` or ``"unavailable: apache build"``;
* :meth:`CompressionState.as_maintenance_report`: the maintenance report's view, whose
  state says whether maintenance has set compression up on every hypertable
  (``"enabled"``: compression and its policy on each; ``"partly enabled"``;
  ``"not enabled yet"``);
* :meth:`CompressionState.as_pipeline_db`: ``/pipeline/db``'s view, whose state says
  whether any hypertable has compression on (``"enabled"`` / ``"disabled"``), with its
  progress per hypertable.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

__all__ = ["CompressionState", "HypertableCompression", "read_compression_state"]

SERVER = """
SELECT current_setting('timescaledb.license', true) AS license,
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS version
"""

HYPERTABLES = """
SELECT format('%I.%I', h.hypertable_schema, h.hypertable_name) AS name, h.compression_enabled,
       s.segmentby, s.orderby,
       (SELECT count(*) FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = h.hypertable_schema
           AND c.hypertable_name = h.hypertable_name) AS chunks,
       (SELECT count(*) FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = h.hypertable_schema
           AND c.hypertable_name = h.hypertable_name AND c.is_compressed) AS compressed_chunks,
       (SELECT j.config->>'compress_after' FROM timescaledb_information.jobs j
         WHERE j.proc_name = 'policy_compression' AND j.hypertable_schema = h.hypertable_schema
           AND j.hypertable_name = h.hypertable_name LIMIT 1) AS compress_after,
       (SELECT j.config->>'drop_after' FROM timescaledb_information.jobs j
         WHERE j.proc_name = 'policy_retention' AND j.hypertable_schema = h.hypertable_schema
           AND j.hypertable_name = h.hypertable_name LIMIT 1) AS drop_after
FROM timescaledb_information.hypertables h
LEFT JOIN timescaledb_information.hypertable_compression_settings s
       ON s.hypertable = format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass
WHERE h.hypertable_schema = 'storage'
ORDER BY 1
"""

# Timescale license only: the functions behind it refuse to run on the Apache build.
COMPRESSION_STATS = """
SELECT format('%I.%I', h.hypertable_schema, h.hypertable_name) AS name,
       s.before_compression_total_bytes AS before_bytes,
       s.after_compression_total_bytes AS after_bytes
FROM timescaledb_information.hypertables h
CROSS JOIN LATERAL hypertable_compression_stats(
    format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass) s
WHERE h.hypertable_schema = 'storage' AND h.compression_enabled
"""


@dataclass(frozen=True)
class HypertableCompression:
    """One hypertable's compression settings, progress and policies."""

    name: str  # "schema.table"
    compression_enabled: bool
    segmentby: str | None = None
    orderby: str | None = None
    chunks: int | None = None
    compressed_chunks: int | None = None
    compress_after: str | None = None  # the compression policy's interval; None: no policy
    drop_after: str | None = None  # the retention policy's interval; None: no policy
    before_bytes: int | None = None  # sizes before/after compression (Timescale license)
    after_bytes: int | None = None


@dataclass(frozen=True)
class CompressionState:
    """What the database says about compression (see the module docstring)."""

    license: str | None  # timescaledb.license; None when TimescaleDB is not loaded
    timescaledb_version: str | None  # the extension's version; None when not installed
    hypertables: tuple[HypertableCompression, ...] = ()
    errors: tuple[str, ...] = ()  # parts that could not be read (see read_compression_state)

    @classmethod
    def from_rows(cls, license_: str | None, timescaledb_version: str | None,
                  hypertables: Sequence[Mapping[str, Any]],
                  stats: Sequence[Mapping[str, Any]] = (),
                  errors: Sequence[str] = ()) -> CompressionState:
        """From rows shaped as the HYPERTABLES and COMPRESSION_STATS queries return them."""
        sizes = {row["name"]: row for row in stats}
        tables = []
        for row in hypertables:
            size = sizes.get(row["name"], {})
            tables.append(HypertableCompression(
                name=row["name"], compression_enabled=row["compression_enabled"],
                segmentby=row.get("segmentby"), orderby=row.get("orderby"),
                chunks=row.get("chunks"), compressed_chunks=row.get("compressed_chunks"),
                compress_after=row.get("compress_after"), drop_after=row.get("drop_after"),
                before_bytes=size.get("before_bytes"), after_bytes=size.get("after_bytes"),
            ))
        return cls(license_, timescaledb_version, tuple(tables), tuple(errors))

    @property
    def unavailable(self) -> str | None:
        """Why compression cannot be used ("unavailable: ..."), or None when it can."""
        if self.timescaledb_version is None:
            return "unavailable: timescaledb not installed"
        if self.license is None:
            return "unavailable: timescaledb not loaded"
        if self.license != "timescale":
            return f"unavailable: {self.license} build"
        return None

    def as_maintenance_report(self) -> dict[str, Any]:
        """``{"license", "available", "state", "hypertables": {name: {...}}}``: settings,
        chunk counts and policies of each hypertable, and its sizes where compression is on."""
        available = self.unavailable is None
        tables: dict[str, Any] = {}
        for t in self.hypertables:
            entry: dict[str, Any] = {
                "compression_enabled": t.compression_enabled, "segmentby": t.segmentby,
                "orderby": t.orderby, "chunks": t.chunks,
                "compressed_chunks": t.compressed_chunks, "compress_after": t.compress_after,
                "drop_after": t.drop_after,
            }
            if available and t.compression_enabled:
                entry.update(before_bytes=t.before_bytes, after_bytes=t.after_bytes)
            tables[t.name] = entry
        state = self.unavailable
        if state is None:
            set_up = [t.compression_enabled and t.compress_after for t in self.hypertables]
            state = ("enabled" if set_up and all(set_up)
                     else "partly enabled" if any(set_up) else "not enabled yet")
        return {"license": self.license, "available": available, "state": state,
                "hypertables": tables}

    def as_pipeline_db(self) -> dict[str, Any]:
        """``{"state"}`` where compression is unavailable; else ``{"state", "license",
        "hypertables": {name: {"enabled", "chunks", "compressed_chunks", "before_bytes",
        "after_bytes", "policy_compress_after"}}}``, and ``"errors"`` when a part failed."""
        if self.unavailable is not None:
            return {"state": self.unavailable}
        tables = {
            t.name: {
                "enabled": t.compression_enabled, "chunks": t.chunks,
                "compressed_chunks": t.compressed_chunks, "before_bytes": t.before_bytes,
                "after_bytes": t.after_bytes, "policy_compress_after": t.compress_after,
            }
            for t in self.hypertables
        }
        enabled = any(t.compression_enabled for t in self.hypertables)
        state: dict[str, Any] = {"state": "enabled" if enabled else "disabled",
                                 "license": self.license, "hypertables": tables}
        if self.errors:
            state["errors"] = list(self.errors)
        return state


@dataclass
class _Reader:
    conn: asyncpg.Connection
    tag: str
    timeout: float | None
    on_error: Callable[[Exception], str] | None
    errors: list[str] = field(default_factory=list)

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        if self.on_error is None:
            return [dict(r) for r in await self.conn.fetch(self.tag + sql, timeout=self.timeout)]
        try:
            async with self.conn.transaction():  # a savepoint: a failure spoils only this part
                return [dict(r) for r in
                        await self.conn.fetch(self.tag + sql, timeout=self.timeout)]
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.errors.append(self.on_error(exc))
            return []


async def read_compression_state(conn: asyncpg.Connection, *, tag: str = "",
                                 timeout: float | None = None,
                                 on_error: Callable[[Exception], str] | None = None,
                                 ) -> CompressionState:
    """The compression state, read in one read-only transaction (a savepoint inside one).

    ``tag``: a comment put before each statement; ``timeout``: per statement. Without
    ``on_error`` a failing statement raises; with it, a failing part (the hypertables, the
    sizes) is left out and ``on_error(exc)`` is added to the state's ``errors``.
    """
    reader = _Reader(conn, tag, timeout, on_error)
    async with conn.transaction(readonly=True):
        server = await conn.fetchrow(tag + SERVER, timeout=timeout)
        license_ = server["license"] if server else None
        version = server["version"] if server else None
        if version is None or license_ is None:  # no catalog to read
            return CompressionState(license_, version)
        hypertables = await reader.rows(HYPERTABLES)
        stats: list[dict[str, Any]] = []
        if license_ == "timescale" and any(t["compression_enabled"] for t in hypertables):
            stats = await reader.rows(COMPRESSION_STATS)
    return CompressionState.from_rows(license_, version, hypertables, stats, reader.errors)

"""The state of the database behind the pipeline, sampled in the background for ``/pipeline/db``.

One round reads:
- pgBouncer's pools and traffic from its admin console (``SHOW POOLS`` / ``SHOW STATS``);
- the worker's own connection pools (those registered on ``PipelineStats``);
- from PostgreSQL, in one read-only transaction of a one-connection pool of our own:
  database size, cache hit ratio, WAL position and directory size, WAL archiving
  (``pg_stat_archiver``: segments archived and failed, when last), the newest backup the
  backup tools recorded in ``storage.backups`` (null when none), its streaming replicas
  and their replay lag (``pg_stat_replication``: bytes, seconds), checkpoint counts,
  each hypertable's size, row estimate, chunk count, largest and newest chunk (the
  newest should fit in memory with its indexes), the compression state (or
  "unavailable: apache build" on TimescaleDB's Apache edition) and the top statements of
  ``pg_stat_statements`` when that extension is there.

A round never raises: a part that fails carries ``{"error": ...}`` and the rest stays.
When PostgreSQL cannot be reached the sample says ``"available": false`` with the error.
Our own statements carry the ``STATS_TAG`` comment and are left out of the top statements.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Mapping

import asyncpg

from sinks.compression_state import read_compression_state
from sinks.postgres import create_pool
from streams.settings import Settings
from web.periodic import describe_error
from web.pgbouncer_admin import AdminConsole

STATS_TAG = "/* devicestream-stats */"
TOP_STATEMENTS = 10
STATEMENT_TEXT_CHARS = 200
QUERY_TIMEOUT_SECONDS = 5.0
ROUND_TIMEOUT_SECONDS = 15.0
PG_STAT_CHECKPOINTER_SINCE = 170000  # PostgreSQL 17 moved checkpoint counts there

SERVER = STATS_TAG + """
SELECT current_setting('server_version_num')::int AS version_num,
       pg_database_size(current_database()) AS database_bytes,
       d.blks_hit, d.blks_read, d.numbackends,
       CASE WHEN pg_is_in_recovery()
            THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END::bigint AS wal_position_bytes,
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb_version,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')
           AS pg_stat_statements,
       has_function_privilege('pg_ls_waldir()', 'EXECUTE') AS can_list_wal
FROM pg_stat_database d
WHERE d.datname = current_database()
"""

WAL_DIRECTORY = STATS_TAG + """
SELECT coalesce(sum(size), 0)::bigint AS bytes, count(*) AS files FROM pg_ls_waldir()
"""

ARCHIVER = STATS_TAG + """
SELECT current_setting('archive_mode') <> 'off' AS enabled,
       archived_count, failed_count, last_archived_wal, last_failed_wal,
       extract(epoch FROM last_archived_time)::float8 AS last_archived_at,
       extract(epoch FROM last_failed_time)::float8 AS last_failed_at
FROM pg_stat_archiver
"""
REPLICAS = STATS_TAG + """
SELECT application_name, client_addr::text AS client_addr, state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
       coalesce(extract(epoch FROM replay_lag), 0)::float8 AS replay_lag_seconds
FROM pg_stat_replication
ORDER BY application_name, client_addr
"""
LAST_BACKUP = STATS_TAG + """
SELECT label, type, extract(epoch FROM finished_at)::float8 AS finished_at,
       database_bytes, stored_bytes, (SELECT count(*) FROM storage.backups) AS recorded
FROM storage.backups
ORDER BY finished_at DESC
LIMIT 1
"""
CHECKPOINTS_BEFORE_17 = STATS_TAG + """
SELECT checkpoints_timed AS timed, checkpoints_req AS requested FROM pg_stat_bgwriter
"""

CHECKPOINTS = STATS_TAG + """
SELECT num_timed AS timed, num_requested AS requested FROM pg_stat_checkpointer
"""

HYPERTABLES = STATS_TAG + """
SELECT h.hypertable_schema AS schema, h.hypertable_name AS name, h.compression_enabled,
       s.table_bytes, s.index_bytes, s.toast_bytes, s.total_bytes,
       approximate_row_count(format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass)
           AS approximate_rows
FROM timescaledb_information.hypertables h
CROSS JOIN LATERAL hypertable_detailed_size(
    format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass) s
ORDER BY 1, 2
"""

CHUNKS = STATS_TAG + """
SELECT h.hypertable_schema AS schema, h.hypertable_name AS name, s.chunk_name,
       ch.range_start, ch.range_end, ch.is_compressed, s.total_bytes
FROM timescaledb_information.hypertables h
CROSS JOIN LATERAL chunks_detailed_size(
    format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass) s
JOIN timescaledb_information.chunks ch
  ON ch.chunk_schema = s.chunk_schema AND ch.chunk_name = s.chunk_name
"""

TOP_STATEMENTS_QUERY = STATS_TAG + """
SELECT queryid, calls, rows,
       total_exec_time / 1000.0 AS total_seconds,
       mean_exec_time / 1000.0 AS mean_seconds,
       left(regexp_replace(query, '\\s+', ' ', 'g'), $1) AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT LIKE '%devicestream-stats%'
ORDER BY total_exec_time DESC
LIMIT $2
"""


def utc_iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def cache_hit_ratio(blocks_hit: int | None, blocks_read: int | None) -> float | None:
    """Share of block requests served from shared buffers; None before any request."""
    hit, read = blocks_hit or 0, blocks_read or 0
    return hit / (hit + read) if hit + read else None


def pool_usage(pools: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Connections of each asyncpg pool: open, idle, in use and the maximum."""
    usage = {}
    for name, pool in sorted(pools.items()):
        size, idle = pool.get_size(), pool.get_idle_size()
        usage[name] = {"size": size, "idle": idle, "in_use": size - idle,
                       "max": pool.get_max_size()}
    return usage


def _iso(moment: Any) -> Any:
    return moment.isoformat() if isinstance(moment, datetime) else moment


def with_chunks(hypertables: list[dict[str, Any]],
                chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each hypertable with its chunk count, compressed chunks, largest and newest chunk."""
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for chunk in chunks:
        by_table.setdefault((chunk["schema"], chunk["name"]), []).append(chunk)
    tables = []
    for table in hypertables:
        mine = by_table.get((table["schema"], table["name"]), [])
        newest = max(mine, key=lambda c: (c["range_end"] is not None, c["range_end"] or 0,
                                          c["chunk_name"]), default=None)
        tables.append({
            **table,
            "chunks": len(mine),
            "compressed_chunks": sum(1 for c in mine if c["is_compressed"]),
            "largest_chunk_bytes": max((c["total_bytes"] or 0 for c in mine), default=None),
            "newest_chunk": None if newest is None else {
                "name": newest["chunk_name"],
                "range_start": _iso(newest["range_start"]),
                "range_end": _iso(newest["range_end"]),
                "total_bytes": newest["total_bytes"],
            },
        })
    return tables


def chunks_due_for_compression(hypertables: list[dict[str, Any]], chunks: list[dict[str, Any]],
                               ended_before: datetime) -> int:
    """Chunks of hypertables with compression enabled, ended before ``ended_before`` and
    still uncompressed: the compression policy is behind when this stays above 0."""
    enabled = {(t["schema"], t["name"]) for t in hypertables if t.get("compression_enabled")}
    return sum(1 for c in chunks
               if (c["schema"], c["name"]) in enabled and not c["is_compressed"]
               and c["range_end"] is not None and c["range_end"] < ended_before)


def pgbouncer_report(pools: list[dict[str, Any]], stats: list[dict[str, Any]]) -> dict[str, Any]:
    """SHOW POOLS and SHOW STATS rows, without the admin console's own pseudo-database."""
    return {
        "pools": [row for row in pools if row.get("database") != "pgbouncer"],
        "stats": [row for row in stats if row.get("database") != "pgbouncer"],
    }


async def _optional(part: Callable[[], Awaitable[Any]]) -> Any:
    """Run one part in a savepoint; its failure becomes ``{"error": ...}``."""
    try:
        return await part()
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return {"error": describe_error(exc)}


async def postgres_state(conn: asyncpg.Connection, compress_after_days: int) -> dict[str, Any]:
    """Everything PostgreSQL tells about the pipeline's database (see the module doc)."""
    timeout = QUERY_TIMEOUT_SECONDS

    async def rows(sql: str, *args: Any) -> list[dict[str, Any]]:
        async with conn.transaction():  # a savepoint: a failure spoils only this part
            return [dict(r) for r in await conn.fetch(sql, *args, timeout=timeout)]

    async with conn.transaction(readonly=True):
        server = dict(await conn.fetchrow(SERVER, timeout=timeout))
        state: dict[str, Any] = {
            "server_version_num": server["version_num"],
            "database_bytes": server["database_bytes"],
            "connections": server["numbackends"],
            "cache_hit_ratio": cache_hit_ratio(server["blks_hit"], server["blks_read"]),
            "blocks_hit_total": server["blks_hit"],
            "blocks_read_total": server["blks_read"],
            "timescaledb_version": server["timescaledb_version"],
        }
        wal: dict[str, Any] = {"position_bytes": server["wal_position_bytes"],
                               "directory_bytes": None, "directory_files": None}
        if server["can_list_wal"]:
            directory = await _optional(lambda: rows(WAL_DIRECTORY))
            if isinstance(directory, list):
                wal["directory_bytes"] = directory[0]["bytes"]
                wal["directory_files"] = directory[0]["files"]
            else:
                wal["directory_error"] = directory["error"]
        else:
            wal["directory_error"] = "unavailable: needs the pg_monitor role"
        # streaming replicas of this server (none on a replica itself)
        state["replicas"] = await _optional(lambda: rows(REPLICAS))
        archiver = await _optional(lambda: rows(ARCHIVER))
        wal["archive"] = archiver[0] if isinstance(archiver, list) else archiver
        state["wal"] = wal
        backup = await _optional(lambda: rows(LAST_BACKUP))
        state["last_backup"] = (backup[0] if backup else None) if isinstance(backup, list) else backup
        checkpoints = await _optional(lambda: rows(
            CHECKPOINTS if server["version_num"] >= PG_STAT_CHECKPOINTER_SINCE
            else CHECKPOINTS_BEFORE_17
        ))
        state["checkpoints"] = checkpoints[0] if isinstance(checkpoints, list) else checkpoints

        hypertables: Any = []
        chunks: Any = []
        if server["timescaledb_version"] is not None:
            hypertables = await _optional(lambda: rows(HYPERTABLES))
            chunks = await _optional(lambda: rows(CHUNKS))
            if isinstance(hypertables, list):
                hypertables = with_chunks(hypertables, chunks if isinstance(chunks, list) else [])
                if isinstance(chunks, dict):
                    for table in hypertables:
                        table.update(chunks=None, compressed_chunks=None,
                                     chunks_error=chunks["error"])
        state["hypertables"] = hypertables
        tables = hypertables if isinstance(hypertables, list) else []
        compression = (await read_compression_state(
            conn, tag=STATS_TAG, timeout=timeout, on_error=describe_error)).as_pipeline_db()
        compression["chunks_due"] = chunks_due_for_compression(
            tables, chunks if isinstance(chunks, list) else [],
            datetime.now(timezone.utc) - timedelta(days=compress_after_days + 1))
        state["compression"] = compression

        if server["pg_stat_statements"]:
            state["top_statements"] = await _optional(
                lambda: rows(TOP_STATEMENTS_QUERY, STATEMENT_TEXT_CHARS, TOP_STATEMENTS)
            )
        else:
            state["top_statements"] = {
                "error": "unavailable: pg_stat_statements is not installed in this database"
            }
    return state


class DatabaseSampler:
    """Measures the database state; owns a one-connection pool and an admin connection."""

    def __init__(self, settings: Settings, pools: Callable[[], Mapping[str, Any]]) -> None:
        self._settings = settings
        self._registered_pools = pools
        self._pool: asyncpg.Pool | None = None
        self._admin = AdminConsole(settings.db.host, settings.db.port, settings.db.user,
                                   settings.db.password, timeout=QUERY_TIMEOUT_SECONDS)
        self._last_success: float | None = None

    async def measure(self) -> dict[str, Any]:
        started = time.time()
        postgres: dict[str, Any]
        try:
            postgres = await asyncio.wait_for(self._postgres(), ROUND_TIMEOUT_SECONDS)
        except Exception as exc:  # down, refusing, timing out: the view says so
            postgres = {"error": describe_error(exc)}
        else:
            self._last_success = started
        try:
            bouncer: dict[str, Any] = pgbouncer_report(
                await self._admin.query("SHOW POOLS"), await self._admin.query("SHOW STATS")
            )
        except Exception as exc:
            bouncer = {"error": describe_error(exc)}
        pools = dict(self._registered_pools())
        if self._pool is not None:
            pools["stats"] = self._pool
        error = postgres.get("error")
        return {
            "available": error is None,
            "error": error,
            "sampled_at": utc_iso(started),
            "last_success_at": None if self._last_success is None else utc_iso(self._last_success),
            "pools": pool_usage(pools),
            "pgbouncer": bouncer,
            "postgres": None if error else {
                k: v for k, v in postgres.items()
                if k not in ("hypertables", "compression", "top_statements", "replicas")
            },
            "replicas": None if error else postgres["replicas"],
            "hypertables": None if error else postgres["hypertables"],
            "compression": None if error else postgres["compression"],
            "top_statements": None if error else postgres["top_statements"],
        }

    async def _postgres(self) -> dict[str, Any]:
        if self._pool is None:
            self._pool = await create_pool(self._settings, max_size=1)
        async with self._pool.acquire(timeout=QUERY_TIMEOUT_SECONDS) as conn:
            return await postgres_state(conn, self._settings.storage.compress_after_days)

    async def close(self) -> None:
        await self._admin.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except (asyncio.TimeoutError, OSError):
                pool.terminate()

"""Where the query routes read: the read replica while it is up and close behind, else the
primary.

With ``READ_DB_HOST`` set, ``ReadRoute`` keeps two pools, the replica's and the primary's
(the database the workers write to), and a sample of the replica's replay lag taken every
``REPLICA_CHECK_SECONDS``. A read goes to the replica unless the last sample failed (the
replica is down), the replica is not in recovery (promoted: it no longer follows the
primary), or its lag exceeds ``READ_MAX_LAG_SECONDS``; a connection to the replica that
cannot be made also sends that read to the primary and marks the replica down at once.
Every read sent to the primary for one of those reasons is a counted fallback
(``/pipeline/db`` ``reads``, ``/metrics``), never an error for the client.

The lag is measured on the replica: 0 while it has replayed all the WAL it received,
else the time since the last transaction it replayed was committed on the primary.
"""
from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any, AsyncIterator, Callable, Mapping

import asyncpg

from streams.settings import Settings
from web.periodic import PeriodicSample, describe_error

log = logging.getLogger(__name__)

REPLICA_CHECK_SECONDS = 1.0
REPLICA_LAG = """
SELECT pg_is_in_recovery() AS standby,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
            THEN 0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
       END::float8 AS lag_seconds,
       coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint
           AS lag_bytes
"""
TARGETS = ("replica", "primary")
FALLBACK_REASONS = ("replica_down", "replica_lagging", "replica_promoted")
# A connection to the replica that cannot be made: the read goes to the primary.
UNREACHABLE = (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
               asyncpg.TooManyConnectionsError)

PoolFactory = Callable[[str, Mapping[str, Any]], Any]


class ReadRoute:
    """Chooses the pool of each read; ``acquire`` is the only way the queries get one."""

    def __init__(self, settings: Settings, open_pool: PoolFactory,
                 replica_kwargs: Mapping[str, Any] | None,
                 primary_kwargs: Mapping[str, Any]) -> None:
        self.max_lag = settings.read_db.max_lag_seconds
        self._open_pool = open_pool
        self._kwargs = {"primary": primary_kwargs}
        if replica_kwargs is not None:
            self._kwargs["replica"] = replica_kwargs
        self._pools: dict[str, Any] = {}
        self.reads: Counter[str] = Counter()      # target -> reads
        self.fallbacks: Counter[str] = Counter()  # reason -> reads sent to the primary
        self.replica: PeriodicSample[dict[str, Any]] | None = (
            PeriodicSample("read replica lag", self._measure_replica, REPLICA_CHECK_SECONDS)
            if replica_kwargs is not None else None)

    async def _pool(self, target: str) -> Any:
        if target not in self._pools:
            self._pools[target] = await self._open_pool(target, self._kwargs[target])
        return self._pools[target]

    async def _measure_replica(self) -> dict[str, Any]:
        pool = await self._pool("replica")
        async with pool.acquire() as conn:
            return dict(await conn.fetchrow(REPLICA_LAG, timeout=REPLICA_CHECK_SECONDS * 5))

    def choose(self) -> tuple[str, str | None]:
        """(target, reason of the fallback or None)."""
        if self.replica is None:
            return "primary", None
        if self.replica.error is not None:
            return "primary", "replica_down"
        state = self.replica.value
        if state is None:  # not measured yet: try it (a failure falls back below)
            return "replica", None
        if not state["standby"]:
            return "primary", "replica_promoted"
        if state["lag_seconds"] > self.max_lag:
            return "primary", "replica_lagging"
        return "replica", None

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the chosen pool, released afterwards."""
        target, reason = self.choose()
        pool = conn = None
        if target == "replica":
            try:
                pool = await self._pool("replica")
                conn = await pool.acquire()
            except UNREACHABLE as exc:
                error = describe_error(exc)
                if self.replica is not None and self.replica.error is None:
                    log.warning("read replica unreachable, reading from the primary: %s", error)
                    self.replica.error = error
                    self.replica.refresh_soon()
                target, reason = "primary", "replica_down"
        if pool is None or conn is None:  # (conn is None whenever pool is)
            pool = await self._pool("primary")
            conn = await pool.acquire()
        self.reads[target] += 1
        if reason is not None:
            self.fallbacks[reason] += 1
        try:
            yield conn
        finally:
            await pool.release(conn)

    def state(self) -> dict[str, Any]:
        """What ``/pipeline/db`` shows under ``reads``."""
        target, reason = self.choose()
        report: dict[str, Any] = {"target": target, "fallback_reason": reason,
                                  "reads": dict(self.reads), "fallbacks": dict(self.fallbacks),
                                  "max_lag_seconds": self.max_lag}
        if self.replica is not None:
            report["replica"] = {**(self.replica.value or {}), "error": self.replica.error,
                                 "sample_age_seconds": self.replica.age}
        return report

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.close()

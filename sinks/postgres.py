"""Connections to TimescaleDB, through pgBouncer in transaction mode.

pgBouncer before 1.21 cannot track prepared statements across transactions, so asyncpg's
statement cache is off unless ``DB_STATEMENT_CACHE`` says the bouncer can (>= 1.21 with
``max_prepared_statements``). Every statement of ours runs inside an explicit transaction,
which keeps asyncpg's parse/bind round trips on one server connection.
"""
from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

import asyncpg

from streams.settings import Settings, SslMode

# Errors after which the same statement can succeed later: the server or the bouncer went
# away, is starting, shed load, or two transactions collided. InternalClientError is a
# connection left mid-operation by such a failure: PostgreSQL stopping during a COPY makes
# the pool's reset on release raise it (the pool then drops that connection).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.ConnectionFailureError,
    asyncpg.LockNotAvailableError,
    TimeoutError,
)


async def lift_decompression_limit(conn: asyncpg.Connection) -> None:
    """Let the current transaction decompress any number of tuples.

    A write into a compressed chunk (Timescale license) decompresses the batches it touches,
    and TimescaleDB aborts a transaction that decompresses more than
    ``timescaledb.max_tuples_decompressed_per_dml_transaction`` (100,000 by default).
    Migration 0011 lifts the limit for the database, but only for sessions that start
    after it, and pgBouncer keeps its server sessions for up to ``server_lifetime``: one
    opened before the migration (``make stack-up``'s readiness query, or any before an
    upgrade) kept the default. So the transactions that may write into compressed chunks
    lift it themselves.
    """
    await conn.execute("SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0")


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same work may succeed (connection loss, deadlock, ...)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # pgBouncer reports its own failures (server down, pool timeout) with SQLSTATE 08P01.
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", "") in (
        "08P01",
        "57P01",
        "57P02",
        "57P03",
    )


def connect_kwargs(settings: Settings, *, host: str | None = None) -> dict[str, Any]:
    """asyncpg connection arguments for the configured database."""
    return {
        "host": host or settings.db.host,
        "port": settings.db.port,
        "user": settings.db.user,
        "password": settings.db.password,
        "database": settings.db.name,
        "statement_cache_size": 100 if settings.db.statement_cache else 0,
        "ssl": tls_argument(settings.db.sslmode, settings.db.sslrootcert),
        "command_timeout": 60,
        "server_settings": {"application_name": "devicestream"},
    }


@lru_cache(maxsize=8)
def tls_argument(mode: SslMode, rootcert: str) -> str | ssl.SSLContext:
    """asyncpg's ``ssl`` for DB_SSLMODE: the mode itself, or for verify-ca / verify-full a
    context trusting DB_SSLROOTCERT (the system's CAs when unset), checking the host name
    for verify-full. Such a context never falls back to a plaintext connection."""
    if not mode.verifies:
        return mode.value
    context = ssl.create_default_context(cafile=rootcert or None)
    context.check_hostname = mode is SslMode.VERIFY_FULL
    return context


class DatabaseTLSError(Exception):
    """The database's certificate did not verify: a configuration error, not an outage."""


async def check_tls(settings: Settings) -> None:
    """With DB_SSLMODE verify-ca or verify-full, connect once and raise DatabaseTLSError,
    naming the settings, when the server's certificate does not verify. Any other failure
    (the database down, say) is left to the callers' retries."""
    if not settings.db.sslmode.verifies:
        return
    try:
        conn = await asyncpg.connect(**connect_kwargs(settings), timeout=10)
    except ssl.SSLCertVerificationError as exc:
        raise DatabaseTLSError(
            f"DB_SSLMODE={settings.db.sslmode.value}: the certificate of "
            f"{settings.db.host}:{settings.db.port} does not verify against DB_SSLROOTCERT="
            f"{settings.db.sslrootcert or '(unset: the system CAs)'}: {exc.verify_message}"
        ) from None
    except Exception:  # noqa: BLE001 -- not ours to judge here
        return
    await conn.close()


async def create_pool(settings: Settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """A connection pool to the database (through pgBouncer by default)."""
    return await asyncpg.create_pool(
        min_size=0,
        max_size=max_size or settings.db.pool_size,
        max_inactive_connection_lifetime=60,
        **connect_kwargs(settings),
    )


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection, for commands that run a few statements and exit."""
    return await asyncpg.connect(**connect_kwargs(settings))

"""Connections to TimescaleDB, through pgBouncer in transaction mode.

pgBouncer before 1.21 cannot track prepared statements across transactions, so asyncpg's
statement cache is off unless ``DB_STATEMENT_CACHE`` says the bouncer can (>= 1.21 with
``max_prepared_statements``). Every statement of ours runs inside an explicit transaction,
which keeps asyncpg's parse/bind round trips on one server connection.
"""
from __future__ import annotations

from typing import Any

import asyncpg

from streams.settings import Settings

# Errors after which the same statement can succeed later: the server or the bouncer went
# away, is starting, shed load, or two transactions collided. InternalClientError is a
# connection left mid-operation by such a failure: PostgreSQL stopping during a COPY made
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
        "host": host or settings.db_host,
        "port": settings.db_port,
        "user": settings.db_user,
        "password": settings.db_password,
        "database": settings.db_name,
        "statement_cache_size": 100 if settings.db_statement_cache else 0,
        "ssl": settings.db_sslmode,
        "command_timeout": 60,
        "server_settings": {"application_name": "devicestream"},
    }


async def create_pool(settings: Settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """A connection pool to the database (through pgBouncer by default)."""
    return await asyncpg.create_pool(
        min_size=0,
        max_size=max_size or settings.db_pool_size,
        max_inactive_connection_lifetime=60,
        **connect_kwargs(settings),
    )


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection, for commands that run a few statements and exit."""
    return await asyncpg.connect(**connect_kwargs(settings))

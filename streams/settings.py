"""Runtime configuration, read once from the environment.

Every variable has a default that fits the local stack, so nothing needs configuring on a
developer machine. A bad value fails at start-up with a message naming the variable.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Mapping


class ConfigError(ValueError):
    """An environment variable holds a value the pipeline cannot run with."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


def _regex(env: Mapping[str, str], name: str, default: str) -> str:
    value = _str(env, name, default)
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{name} must be a regular expression: {exc}") from None
    return value


@dataclass(frozen=True)
class Settings:
    """All knobs of a worker, the simulator and the maintenance commands."""

    app_id: str = "devicestream"
    kafka_brokers: str = "127.0.0.1:9092"
    kafka_idempotent_producer: bool = False
    broker_session_timeout: float = 10.0
    device_topic_partitions: int = 10
    topic_replication_factor: int = 1
    topic_discovery_interval: float = 5.0
    device_filter: str = ""

    db_host: str = "127.0.0.1"
    db_port: int = 6432
    db_name: str = "devicestream"
    db_user: str = "devicestream"
    db_password: str = "devicestream"
    db_pool_size: int = 4
    db_statement_cache: bool = False
    db_retry_max_backoff: float = 10.0

    shutdown_timeout: float = 25.0
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    retention_days: int = 90
    compress_after_days: int = 7

    sink_batch_points: int = 20_000
    aggregate_grace: float = 60.0
    sink_linger: float = 0.2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        settings = cls(
            app_id=_str(env, "APP_ID", cls.app_id),
            kafka_brokers=_str(env, "KAFKA_BROKERS", cls.kafka_brokers),
            kafka_idempotent_producer=_bool(
                env, "KAFKA_IDEMPOTENT_PRODUCER", cls.kafka_idempotent_producer
            ),
            broker_session_timeout=_float(
                env, "BROKER_SESSION_TIMEOUT", cls.broker_session_timeout, minimum=1.0
            ),
            device_topic_partitions=_int(
                env, "DEVICE_TOPIC_PARTITIONS", cls.device_topic_partitions, minimum=1
            ),
            topic_replication_factor=_int(
                env, "TOPIC_REPLICATION_FACTOR", cls.topic_replication_factor, minimum=1
            ),
            topic_discovery_interval=_float(
                env, "TOPIC_DISCOVERY_INTERVAL", cls.topic_discovery_interval, minimum=0.5
            ),
            device_filter=_regex(env, "DEVICE_FILTER", cls.device_filter),
            db_host=_str(env, "DB_HOST", cls.db_host),
            db_port=_int(env, "DB_PORT", cls.db_port, minimum=1),
            db_name=_str(env, "DB_NAME", cls.db_name),
            db_user=_str(env, "DB_USER", cls.db_user),
            db_password=_str(env, "DB_PASSWORD", cls.db_password),
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size, minimum=1),
            db_statement_cache=_bool(env, "DB_STATEMENT_CACHE", cls.db_statement_cache),
            db_retry_max_backoff=_float(
                env, "DB_RETRY_MAX_BACKOFF", cls.db_retry_max_backoff, minimum=0.1
            ),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", cls.shutdown_timeout, minimum=1.0),
            web_port=_int(env, "WEB_PORT", cls.web_port, minimum=1),
            web_bind=_str(env, "WEB_BIND", cls.web_bind),
            retention_days=_int(env, "RETENTION_DAYS", cls.retention_days, minimum=1),
            compress_after_days=_int(
                env, "COMPRESS_AFTER_DAYS", cls.compress_after_days, minimum=1
            ),
            sink_batch_points=_int(env, "SINK_BATCH_POINTS", cls.sink_batch_points, minimum=1),
            sink_linger=_float(env, "SINK_LINGER", cls.sink_linger, minimum=0.0),
            aggregate_grace=_float(env, "AGGREGATE_GRACE", cls.aggregate_grace, minimum=0.0),
        )
        if settings.web_port > 65535 or settings.db_port > 65535:
            raise ConfigError("WEB_PORT and DB_PORT must be <= 65535")
        return settings

    def redacted(self) -> dict[str, object]:
        """The settings as a dict with secrets masked, safe to log."""
        return {
            f.name: ("***" if "password" in f.name else getattr(self, f.name))
            for f in fields(self)
        }

"""Runtime configuration, read once from the environment.

Every variable has a default that fits the local stack, so nothing needs configuring on a
developer machine. A bad value fails at start-up with a message naming the variable.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, fields, replace
from typing import Mapping

from schema.validation import MAX_VALUE_BYTES


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


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(env, name, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {env.get(name)!r}")
    return value


def _regex(env: Mapping[str, str], name: str, default: str) -> str:
    value = _str(env, name, default)
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{name} must be a regular expression: {exc}") from None
    return value


MIN_SECRET_CHARS = 32  # an HMAC key: at least 128 bits however it is written


def _token(env: Mapping[str, str], name: str) -> str:
    """A secret; the error never shows the value."""
    value = env.get(name) or ""
    if value and (value != value.strip() or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value)):
        raise ConfigError(
            f"{name} must be printable ASCII without spaces (it travels in an HTTP header)"
        )
    return value


def _readable_file(env: Mapping[str, str], name: str) -> str:
    """A path to a file the process can read; empty (unset) stays empty."""
    path = env.get(name) or ""
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ConfigError(f"{name}={path} is not a readable file")
    return path


def _writable_dir(env: Mapping[str, str], name: str) -> str:
    """A directory the process can write, created when missing; empty (unset) stays empty."""
    path = env.get(name) or ""
    if path:
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise ConfigError(f"{name} must be a directory this process can write: {path!r} "
                              f"({exc.strerror or exc})") from None
    return path


def _is_secret(name: str) -> bool:
    return "password" in name or "token" in name or "secret" in name


# TOPIC_MODE: one topic per device (the design's default) or one shared topic keyed by device.
TOPIC_MODES = ("per-device", "shared")
COMPRESSIONS = ("snappy", "lz4", "zstd", "gzip", "none")


@dataclass(frozen=True)
class Settings:
    """All knobs of a worker, the simulator and the maintenance commands."""

    app_id: str = "devicestream"
    kafka_brokers: str = "127.0.0.1:9092"
    kafka_idempotent_producer: bool = False
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ca_file: str = ""
    broker_session_timeout: float = 10.0
    device_topic_partitions: int = 10
    topic_replication_factor: int = 1
    topic_discovery_interval: float = 5.0
    kafka_fetch_max_wait: float = 0.25
    device_filter: str = ""
    topic_mode: str = "per-device"

    producer_compression: str = "snappy"
    producer_linger: float = 0.05
    producer_batch_bytes: int = 512 * 1024
    producer_buffer_bytes: int = 32 * 1024 * 1024
    producer_delivery_timeout: float = 30.0

    db_host: str = "127.0.0.1"
    db_port: int = 6432
    db_name: str = "devicestream"
    db_user: str = "devicestream"
    db_password: str = "devicestream"
    db_owner_user: str = "devicestream_owner"  # runs the migrations (least privilege)
    db_owner_password: str = "devicestream_owner"
    db_pool_size: int = 4
    db_statement_cache: bool = False
    db_sslmode: str = "prefer"
    db_sslrootcert: str = ""  # CA file for verify-ca/verify-full; empty: the system's CAs
    db_retry_max_backoff: float = 10.0

    shutdown_timeout: float = 25.0
    data_dir: str = ".faust-data"
    disk_paths: str = ""  # comma-separated; empty: data_dir
    stall_seconds: float = 60.0
    stall_exit: bool = True
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    ingest_token: str = ""
    device_token_secret: str = ""  # empty: no device tokens
    device_token_secret_previous: str = ""  # still accepted while devices move to the new one
    read_token: str = ""  # empty: the read routes are open
    retention_days: int = 90
    compress_after_days: int = 7
    aggregate_1m_retention_days: int = 365
    aggregate_1h_retention_days: int = 1825
    maintenance_interval: int = 3600
    archive_dir: str = ""  # empty: raw chunks are dropped without a Parquet archive
    read_db_host: str = ""
    read_db_port: int = 0
    read_db_name: str = ""  # empty: db_name
    read_db_pool_size: int = 4
    read_max_lag_seconds: float = 5.0
    read_db_user: str = "devicestream_reader"  # the query API's read-only role
    read_db_password: str = "devicestream_reader"
    query_raw_max_range: int = 24
    query_max_rows: int = 10_000
    query_timeout: float = 10.0

    sink_batch_points: int = 50_000
    aggregate_grace: float = 60.0
    event_clock_max_devices: int = 100_000
    sink_linger: float = 0.2
    sink_writers: int = 2

    def as_owner(self) -> "Settings":
        """These settings connecting as the owner role, which runs the migrations."""
        return replace(self, db_user=self.db_owner_user, db_password=self.db_owner_password)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        settings = cls(
            app_id=_str(env, "APP_ID", cls.app_id),
            kafka_brokers=_str(env, "KAFKA_BROKERS", cls.kafka_brokers),
            kafka_security_protocol=_choice(
                env, "KAFKA_SECURITY_PROTOCOL", cls.kafka_security_protocol,
                ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
            ).upper(),
            kafka_sasl_mechanism=_choice(
                env, "KAFKA_SASL_MECHANISM", cls.kafka_sasl_mechanism,
                ("plain", "scram-sha-256", "scram-sha-512"),
            ).upper(),
            kafka_sasl_username=_str(env, "KAFKA_SASL_USERNAME", cls.kafka_sasl_username),
            kafka_sasl_password=_str(env, "KAFKA_SASL_PASSWORD", cls.kafka_sasl_password),
            kafka_ca_file=_str(env, "KAFKA_CA_FILE", cls.kafka_ca_file),
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
            kafka_fetch_max_wait=_float(
                env, "KAFKA_FETCH_MAX_WAIT", cls.kafka_fetch_max_wait, minimum=0.001
            ),
            topic_discovery_interval=_float(
                env, "TOPIC_DISCOVERY_INTERVAL", cls.topic_discovery_interval, minimum=0.5
            ),
            device_filter=_regex(env, "DEVICE_FILTER", cls.device_filter),
            topic_mode=_choice(env, "TOPIC_MODE", cls.topic_mode, TOPIC_MODES),
            producer_compression=_choice(
                env, "PRODUCER_COMPRESSION", cls.producer_compression, COMPRESSIONS
            ),
            producer_linger=_float(env, "PRODUCER_LINGER", cls.producer_linger, minimum=0.0),
            producer_batch_bytes=_int(
                env, "PRODUCER_BATCH_BYTES", cls.producer_batch_bytes, minimum=1024
            ),
            producer_buffer_bytes=_int(
                env, "PRODUCER_BUFFER_BYTES", cls.producer_buffer_bytes, minimum=1024 * 1024
            ),
            producer_delivery_timeout=_float(
                env, "PRODUCER_DELIVERY_TIMEOUT", cls.producer_delivery_timeout, minimum=0.1
            ),
            db_host=_str(env, "DB_HOST", cls.db_host),
            db_port=_int(env, "DB_PORT", cls.db_port, minimum=1),
            db_name=_str(env, "DB_NAME", cls.db_name),
            db_user=_str(env, "DB_USER", cls.db_user),
            db_password=_str(env, "DB_PASSWORD", cls.db_password),
            db_owner_user=_str(env, "DB_OWNER_USER", cls.db_owner_user),
            db_owner_password=_str(env, "DB_OWNER_PASSWORD", cls.db_owner_password),
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size, minimum=1),
            db_sslmode=_choice(
                env, "DB_SSLMODE", cls.db_sslmode,
                ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
            ),
            db_sslrootcert=_readable_file(env, "DB_SSLROOTCERT"),
            db_statement_cache=_bool(env, "DB_STATEMENT_CACHE", cls.db_statement_cache),
            db_retry_max_backoff=_float(
                env, "DB_RETRY_MAX_BACKOFF", cls.db_retry_max_backoff, minimum=0.1
            ),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", cls.shutdown_timeout, minimum=1.0),
            data_dir=_str(env, "DATA_DIR", cls.data_dir),
            disk_paths=_str(env, "DISK_PATHS", cls.disk_paths),
            stall_seconds=_float(env, "STALL_SECONDS", cls.stall_seconds, minimum=1.0),
            stall_exit=_bool(env, "STALL_EXIT", cls.stall_exit),
            web_port=_int(env, "WEB_PORT", cls.web_port, minimum=1),
            web_bind=_str(env, "WEB_BIND", cls.web_bind),
            ingest_token=_token(env, "INGEST_TOKEN"),
            device_token_secret=_token(env, "DEVICE_TOKEN_SECRET"),
            device_token_secret_previous=_token(env, "DEVICE_TOKEN_SECRET_PREVIOUS"),
            read_token=_token(env, "READ_TOKEN"),
            retention_days=_int(env, "RETENTION_DAYS", cls.retention_days, minimum=1),
            compress_after_days=_int(
                env, "COMPRESS_AFTER_DAYS", cls.compress_after_days, minimum=1
            ),
            aggregate_1m_retention_days=_int(
                env, "AGGREGATE_1M_RETENTION_DAYS", cls.aggregate_1m_retention_days, minimum=1
            ),
            aggregate_1h_retention_days=_int(
                env, "AGGREGATE_1H_RETENTION_DAYS", cls.aggregate_1h_retention_days, minimum=1
            ),
            maintenance_interval=_int(
                env, "MAINTENANCE_INTERVAL", cls.maintenance_interval, minimum=0
            ),
            archive_dir=_writable_dir(env, "ARCHIVE_DIR"),
            read_db_host=_str(env, "READ_DB_HOST", cls.read_db_host),
            read_db_port=_int(env, "READ_DB_PORT", cls.read_db_port, minimum=0),
            read_db_name=_str(env, "READ_DB_NAME", cls.read_db_name),
            read_db_pool_size=_int(env, "READ_DB_POOL_SIZE", cls.read_db_pool_size, minimum=1),
            read_max_lag_seconds=_float(env, "READ_MAX_LAG_SECONDS", cls.read_max_lag_seconds),
            read_db_user=_str(env, "READ_DB_USER", cls.read_db_user),
            read_db_password=_str(env, "READ_DB_PASSWORD", cls.read_db_password),
            query_raw_max_range=_int(
                env, "QUERY_RAW_MAX_RANGE", cls.query_raw_max_range, minimum=1
            ),
            query_max_rows=_int(env, "QUERY_MAX_ROWS", cls.query_max_rows, minimum=1),
            query_timeout=_float(env, "QUERY_TIMEOUT", cls.query_timeout, minimum=0.1),
            sink_batch_points=_int(env, "SINK_BATCH_POINTS", cls.sink_batch_points, minimum=1),
            sink_linger=_float(env, "SINK_LINGER", cls.sink_linger, minimum=0.0),
            sink_writers=_int(env, "SINK_WRITERS", cls.sink_writers, minimum=1),
            aggregate_grace=_float(env, "AGGREGATE_GRACE", cls.aggregate_grace, minimum=0.0),
            event_clock_max_devices=_int(
                env, "EVENT_CLOCK_MAX_DEVICES", cls.event_clock_max_devices, minimum=1),
        )
        if settings.web_port > 65535 or settings.db_port > 65535:
            raise ConfigError("WEB_PORT and DB_PORT must be <= 65535")
        if settings.db_pool_size <= settings.sink_writers:
            raise ConfigError(
                f"DB_POOL_SIZE ({settings.db_pool_size}) must be greater than SINK_WRITERS "
                f"({settings.sink_writers}): each writer holds a connection, and dead letters "
                "need one more"
            )
        for name, secret in (("DEVICE_TOKEN_SECRET", settings.device_token_secret),
                             ("DEVICE_TOKEN_SECRET_PREVIOUS",
                              settings.device_token_secret_previous)):
            if secret and len(secret) < MIN_SECRET_CHARS:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_CHARS} characters "
                                  "(e.g. openssl rand -hex 32)")
        if settings.device_token_secret_previous and not settings.device_token_secret:
            raise ConfigError("DEVICE_TOKEN_SECRET_PREVIOUS is set without DEVICE_TOKEN_SECRET: "
                              "set the new secret, and keep the old one as the previous")
        if settings.read_db_port > 65535:
            raise ConfigError("READ_DB_PORT must be <= 65535")
        if settings.producer_batch_bytes > MAX_VALUE_BYTES:
            raise ConfigError(
                f"PRODUCER_BATCH_BYTES must be <= {MAX_VALUE_BYTES} (the 1 MiB message limit), "
                f"got {settings.producer_batch_bytes}"
            )
        return settings

    def watched_disks(self) -> list[str]:
        """The paths whose file systems' space the worker reports (``DISK_PATHS``)."""
        return [p.strip() for p in self.disk_paths.split(",") if p.strip()] or [self.data_dir]

    def redacted(self) -> dict[str, object]:
        """The settings as a dict with secrets masked, safe to log."""
        return {
            f.name: ("***" if _is_secret(f.name) else getattr(self, f.name))
            for f in fields(self)
        }

"""Runtime configuration, read once from the environment.

Every variable has a default that fits the local stack, so nothing needs configuring on a
developer machine. A bad value fails at start-up with a message naming the variable.

``Settings`` holds one frozen, typed group per concern; each group reads its own variables
(``from_env``) and documents each field with its variable. A field is mostly named after
its variable without the group's prefix (``DB_HOST`` -> ``settings.db.host``):

==============  ========================  ====================================================
attribute       class                     variables
==============  ========================  ====================================================
``kafka``       ``KafkaSettings``         ``KAFKA_*`` (connection, security), the consumer's
                                          ``BROKER_SESSION_TIMEOUT``
``topics``      ``TopicSettings``         ``TOPIC_MODE``, ``DEVICE_FILTER``, partitions,
                                          replication, discovery
``producer``    ``ProducerSettings``      ``PRODUCER_*``, ``KAFKA_IDEMPOTENT_PRODUCER``
``db``          ``DatabaseSettings``      ``DB_*``: the primary, as the workers' role
``read_db``     ``ReadDatabaseSettings``  ``READ_DB_*``, ``READ_MAX_LAG_SECONDS``: the query
                                          API's read pools
``query``       ``QuerySettings``         ``QUERY_*``: the query API's limits
``sink``        ``SinkSettings``          ``SINK_*``, ``AGGREGATE_GRACE``,
                                          ``EVENT_CLOCK_MAX_DEVICES``
``storage``     ``StorageSettings``       retention, compression, maintenance, archive
``web``         ``WebSettings``           ``WEB_*`` and the tokens and secrets of the routes
``worker``      ``WorkerSettings``        ``APP_ID``, ``DATA_DIR``, disks, stall watchdog,
                                          shutdown
==============  ========================  ====================================================

The variables that name one of a few choices are enums (``TopicMode``, ``Compression``,
``SslMode``, ``SecurityProtocol``, ``SaslMechanism``): compare with their members, and hand a
library the member's ``.value``.

Tests and tools change one value with ``dataclasses.replace`` on the group and the root:
``replace(settings, db=replace(settings.db, port=5433))``.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field, fields, replace
from enum import Enum, StrEnum
from typing import Any, Mapping, TypeVar

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


class TopicMode(StrEnum):
    """``TOPIC_MODE``: where devices publish their readings, and so what the workers read."""

    PER_DEVICE = "per-device"  # each device its own topic device-data-{device_id} (the design's)
    SHARED = "shared"  # every device the one topic device-data, keyed by device id
    # Workers only, while a deployment moves from per-device topics to shared: they read
    # both. A producer publishes to one place (streams.topics.topic_for refuses this one).
    BOTH = "both"

    @property
    def reads_device_topics(self) -> bool:
        """Whether a worker in this mode follows the device topics ``device-data-{id}``."""
        return self is not TopicMode.SHARED

    @property
    def reads_shared_topic(self) -> bool:
        """Whether a worker in this mode reads the shared topic ``device-data``."""
        return self is not TopicMode.PER_DEVICE


class Compression(StrEnum):
    """``PRODUCER_COMPRESSION``: the codec of the messages ``DeviceProducer`` builds."""

    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"

    @property
    def codec(self) -> str | None:
        """The Kafka client's ``compression_type``: the name, None for none."""
        return None if self is Compression.NONE else self.value


class SslMode(StrEnum):
    """``DB_SSLMODE``: TLS to the database, as libpq and asyncpg name the modes."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"

    @property
    def verifies(self) -> bool:
        """Whether the server's certificate is verified (and plaintext never used)."""
        return self in (SslMode.VERIFY_CA, SslMode.VERIFY_FULL)


class SecurityProtocol(StrEnum):
    """``KAFKA_SECURITY_PROTOCOL``: how every Kafka client of ours talks to the brokers."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    """``KAFKA_SASL_MECHANISM``: how a SASL client authenticates."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


_E = TypeVar("_E", bound=StrEnum)


def _choice(env: Mapping[str, str], name: str, default: _E) -> _E:
    """One member of ``default``'s enum, named by its value in any case."""
    members = {member.value.lower(): member for member in type(default)}
    value = _str(env, name, default.value).strip().lower()
    if value not in members:
        raise ConfigError(f"{name} must be one of {', '.join(members)}, got {env.get(name)!r}")
    return members[value]


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


def _shown(value: object) -> object:
    """A value as ``redacted`` shows it: an enum by its value."""
    return value.value if isinstance(value, Enum) else value


@dataclass(frozen=True)
class KafkaSettings:
    """The brokers, how every Kafka client of ours connects to them, and the consumer."""

    brokers: str = "127.0.0.1:9092"
    """``KAFKA_BROKERS``: comma-separated bootstrap servers."""
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    """``KAFKA_SECURITY_PROTOCOL``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    """``KAFKA_SASL_MECHANISM``: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
    sasl_username: str = ""
    """``KAFKA_SASL_USERNAME``: SASL user."""
    sasl_password: str = ""
    """``KAFKA_SASL_PASSWORD``: SASL password (secret)."""
    ca_file: str = ""
    """``KAFKA_CA_FILE``: CA bundle of the brokers' certificates; empty: the system's CAs."""
    session_timeout: float = 10.0
    """``BROKER_SESSION_TIMEOUT``: consumer group session timeout, seconds."""
    fetch_max_wait: float = 0.25
    """``KAFKA_FETCH_MAX_WAIT``: seconds a worker's fetch may wait for data."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "KafkaSettings":
        return cls(
            brokers=_str(env, "KAFKA_BROKERS", cls.brokers),
            security_protocol=_choice(env, "KAFKA_SECURITY_PROTOCOL", cls.security_protocol),
            sasl_mechanism=_choice(env, "KAFKA_SASL_MECHANISM", cls.sasl_mechanism),
            sasl_username=_str(env, "KAFKA_SASL_USERNAME", cls.sasl_username),
            sasl_password=_str(env, "KAFKA_SASL_PASSWORD", cls.sasl_password),
            ca_file=_str(env, "KAFKA_CA_FILE", cls.ca_file),
            session_timeout=_float(
                env, "BROKER_SESSION_TIMEOUT", cls.session_timeout, minimum=1.0
            ),
            fetch_max_wait=_float(env, "KAFKA_FETCH_MAX_WAIT", cls.fetch_max_wait, minimum=0.001),
        )


@dataclass(frozen=True)
class TopicSettings:
    """The layout of the device topics, and which devices this worker follows."""

    mode: TopicMode = TopicMode.PER_DEVICE
    """``TOPIC_MODE``: ``per-device`` (topic ``device-data-{device_id}``) or ``shared`` (one
    topic ``device-data`` keyed by device id); ``both``, for workers only, reads both while
    a deployment moves from per-device topics to shared (producers refuse it)."""
    device_filter: str = ""
    """``DEVICE_FILTER``: regular expression a device id must match (from its start) to be
    processed by this worker; empty: all."""
    partitions: int = 10
    """``DEVICE_TOPIC_PARTITIONS``: partitions of each device topic we create (shared mode:
    of ``device-data``)."""
    replication_factor: int = 1
    """``TOPIC_REPLICATION_FACTOR``: replication factor of the topics we create."""
    discovery_interval: float = 5.0
    """``TOPIC_DISCOVERY_INTERVAL``: seconds between looks for new device topics."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "TopicSettings":
        return cls(
            partitions=_int(env, "DEVICE_TOPIC_PARTITIONS", cls.partitions, minimum=1),
            replication_factor=_int(
                env, "TOPIC_REPLICATION_FACTOR", cls.replication_factor, minimum=1
            ),
            discovery_interval=_float(
                env, "TOPIC_DISCOVERY_INTERVAL", cls.discovery_interval, minimum=0.5
            ),
            device_filter=_regex(env, "DEVICE_FILTER", cls.device_filter),
            mode=_choice(env, "TOPIC_MODE", cls.mode),
        )


@dataclass(frozen=True)
class ProducerSettings:
    """How ``DeviceProducer`` batches, compresses and delivers readings."""

    compression: Compression = Compression.SNAPPY
    """``PRODUCER_COMPRESSION``: snappy, lz4, zstd, gzip or none."""
    linger: float = 0.05
    """``PRODUCER_LINGER``: seconds a device's readings may wait to fill one message."""
    batch_bytes: int = 512 * 1024
    """``PRODUCER_BATCH_BYTES``: largest message built, bytes (at most ``MAX_VALUE_BYTES``)."""
    buffer_bytes: int = 32 * 1024 * 1024
    """``PRODUCER_BUFFER_BYTES``: bytes buffered or unacknowledged before ``send`` waits."""
    delivery_timeout: float = 30.0
    """``PRODUCER_DELIVERY_TIMEOUT``: seconds a message may take to be acknowledged."""
    idempotent: bool = False
    """``KAFKA_IDEMPOTENT_PRODUCER``: idempotent producing (the local broker refuses it)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ProducerSettings":
        settings = cls(
            idempotent=_bool(env, "KAFKA_IDEMPOTENT_PRODUCER", cls.idempotent),
            compression=_choice(env, "PRODUCER_COMPRESSION", cls.compression),
            linger=_float(env, "PRODUCER_LINGER", cls.linger, minimum=0.0),
            batch_bytes=_int(env, "PRODUCER_BATCH_BYTES", cls.batch_bytes, minimum=1024),
            buffer_bytes=_int(
                env, "PRODUCER_BUFFER_BYTES", cls.buffer_bytes, minimum=1024 * 1024
            ),
            delivery_timeout=_float(
                env, "PRODUCER_DELIVERY_TIMEOUT", cls.delivery_timeout, minimum=0.1
            ),
        )
        if settings.batch_bytes > MAX_VALUE_BYTES:
            raise ConfigError(
                f"PRODUCER_BATCH_BYTES must be <= {MAX_VALUE_BYTES} (the 1 MiB message limit), "
                f"got {settings.batch_bytes}"
            )
        return settings


@dataclass(frozen=True)
class DatabaseSettings:
    """The primary database (through pgBouncer), as the workers' role and as the owner."""

    host: str = "127.0.0.1"
    """``DB_HOST``: database host (pgBouncer)."""
    port: int = 6432
    """``DB_PORT``: database port (pgBouncer)."""
    name: str = "devicestream"
    """``DB_NAME``: database name."""
    user: str = "devicestream"
    """``DB_USER``: the workers' role; owns no table."""
    password: str = "devicestream"
    """``DB_PASSWORD``: its password (secret)."""
    owner_user: str = "devicestream_owner"
    """``DB_OWNER_USER``: the role the migrations run as (least privilege)."""
    owner_password: str = "devicestream_owner"
    """``DB_OWNER_PASSWORD``: its password (secret)."""
    pool_size: int = 4
    """``DB_POOL_SIZE``: connections per worker pool; more than ``SINK_WRITERS``."""
    statement_cache: bool = False
    """``DB_STATEMENT_CACHE``: asyncpg's statement cache (pgBouncer >= 1.21 with
    ``max_prepared_statements``)."""
    sslmode: SslMode = SslMode.PREFER
    """``DB_SSLMODE``: disable, allow, prefer, require, verify-ca or verify-full."""
    sslrootcert: str = ""
    """``DB_SSLROOTCERT``: CA file for verify-ca/verify-full; empty: the system's CAs."""
    retry_max_backoff: float = 10.0
    """``DB_RETRY_MAX_BACKOFF``: seconds, cap of the retry backoff on database errors."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DatabaseSettings":
        return cls(
            host=_str(env, "DB_HOST", cls.host),
            port=_int(env, "DB_PORT", cls.port, minimum=1),
            name=_str(env, "DB_NAME", cls.name),
            user=_str(env, "DB_USER", cls.user),
            password=_str(env, "DB_PASSWORD", cls.password),
            owner_user=_str(env, "DB_OWNER_USER", cls.owner_user),
            owner_password=_str(env, "DB_OWNER_PASSWORD", cls.owner_password),
            pool_size=_int(env, "DB_POOL_SIZE", cls.pool_size, minimum=1),
            sslmode=_choice(env, "DB_SSLMODE", cls.sslmode),
            sslrootcert=_readable_file(env, "DB_SSLROOTCERT"),
            statement_cache=_bool(env, "DB_STATEMENT_CACHE", cls.statement_cache),
            retry_max_backoff=_float(
                env, "DB_RETRY_MAX_BACKOFF", cls.retry_max_backoff, minimum=0.1
            ),
        )

    def as_owner(self) -> "DatabaseSettings":
        """The same database, connecting as the owner role."""
        return replace(self, user=self.owner_user, password=self.owner_password)


@dataclass(frozen=True)
class ReadDatabaseSettings:
    """The query API's read pools: a read replica (when host, port or name is set) with the
    primary as its fallback, both as the read-only role."""

    host: str = ""
    """``READ_DB_HOST``: host of the read replica (or its pgBouncer); empty: ``DB_HOST``."""
    port: int = 0
    """``READ_DB_PORT``: its port; 0 (unset): ``DB_PORT``."""
    name: str = ""
    """``READ_DB_NAME``: its database name; empty: ``DB_NAME``."""
    pool_size: int = 4
    """``READ_DB_POOL_SIZE``: connections of each read pool (replica, primary) per worker."""
    user: str = "devicestream_reader"
    """``READ_DB_USER``: the read-only role of the read pools."""
    password: str = "devicestream_reader"
    """``READ_DB_PASSWORD``: its password (secret)."""
    max_lag_seconds: float = 5.0
    """``READ_MAX_LAG_SECONDS``: replica replay lag beyond which reads go to the primary."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ReadDatabaseSettings":
        settings = cls(
            host=_str(env, "READ_DB_HOST", cls.host),
            port=_int(env, "READ_DB_PORT", cls.port, minimum=0),
            name=_str(env, "READ_DB_NAME", cls.name),
            pool_size=_int(env, "READ_DB_POOL_SIZE", cls.pool_size, minimum=1),
            max_lag_seconds=_float(env, "READ_MAX_LAG_SECONDS", cls.max_lag_seconds),
            user=_str(env, "READ_DB_USER", cls.user),
            password=_str(env, "READ_DB_PASSWORD", cls.password),
        )
        if settings.port > 65535:
            raise ConfigError("READ_DB_PORT must be <= 65535")
        return settings


@dataclass(frozen=True)
class QuerySettings:
    """The query API's limits."""

    raw_max_range: int = 24
    """``QUERY_RAW_MAX_RANGE``: hours, the longest range of raw readings per request."""
    max_rows: int = 10_000
    """``QUERY_MAX_ROWS``: most rows per answer (the largest ``limit``)."""
    timeout: float = 10.0
    """``QUERY_TIMEOUT``: seconds a query may take before the answer is 503."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "QuerySettings":
        return cls(
            raw_max_range=_int(env, "QUERY_RAW_MAX_RANGE", cls.raw_max_range, minimum=1),
            max_rows=_int(env, "QUERY_MAX_ROWS", cls.max_rows, minimum=1),
            timeout=_float(env, "QUERY_TIMEOUT", cls.timeout, minimum=0.1),
        )


@dataclass(frozen=True)
class SinkSettings:
    """How a worker batches readings into the database, and its event-time clocks."""

    batch_points: int = 50_000
    """``SINK_BATCH_POINTS``: points per database batch."""
    linger: float = 0.2
    """``SINK_LINGER``: seconds a batch may wait to fill before it is written."""
    writers: int = 2
    """``SINK_WRITERS``: batches written at the same time, one connection each (below
    ``DB_POOL_SIZE``)."""
    series_cache_mb: int = 512
    """``SINK_SERIES_CACHE_MB``: MiB of series ids (and their newest stored times) the sink
    keeps in memory, by its own estimate; past it the cache starts over."""
    aggregate_grace: float = 60.0
    """``AGGREGATE_GRACE``: seconds of event time after a bucket's end before it closes."""
    event_clock_max_devices: int = 100_000
    """``EVENT_CLOCK_MAX_DEVICES``: devices whose event-time clocks a worker keeps in memory."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "SinkSettings":
        return cls(
            batch_points=_int(env, "SINK_BATCH_POINTS", cls.batch_points, minimum=1),
            linger=_float(env, "SINK_LINGER", cls.linger, minimum=0.0),
            writers=_int(env, "SINK_WRITERS", cls.writers, minimum=1),
            series_cache_mb=_int(env, "SINK_SERIES_CACHE_MB", cls.series_cache_mb, minimum=1),
            aggregate_grace=_float(env, "AGGREGATE_GRACE", cls.aggregate_grace, minimum=0.0),
            event_clock_max_devices=_int(
                env, "EVENT_CLOCK_MAX_DEVICES", cls.event_clock_max_devices, minimum=1),
        )


@dataclass(frozen=True)
class StorageSettings:
    """How long data is kept, when it is compressed, and the maintenance that does it
    (``sinks.maintenance.RetentionSettings`` is the part a maintenance run takes)."""

    retention_days: int = 90
    """``RETENTION_DAYS``: days raw readings are kept unless ``devices.retention_days`` says
    otherwise; older readings are invalid at ingest."""
    compress_after_days: int = 7
    """``COMPRESS_AFTER_DAYS``: compression policy age, where the TimescaleDB build allows it."""
    aggregate_1m_retention_days: int = 365
    """``AGGREGATE_1M_RETENTION_DAYS``: days ``readings_1m`` is kept."""
    aggregate_1h_retention_days: int = 1825
    """``AGGREGATE_1H_RETENTION_DAYS``: days ``readings_1h`` is kept."""
    maintenance_interval: int = 3600
    """``MAINTENANCE_INTERVAL``: seconds between maintenance runs on the leader; 0: off."""
    archive_dir: str = ""
    """``ARCHIVE_DIR``: where raw chunks are archived to Parquet before they are dropped;
    empty: dropped without an archive."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "StorageSettings":
        return cls(
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
        )


@dataclass(frozen=True)
class WebSettings:
    """A worker's web server, and the tokens and secrets its routes check."""

    port: int = 6066
    """``WEB_PORT``: web server port."""
    bind: str = "127.0.0.1"
    """``WEB_BIND``: web server address."""
    ingest_token: str = ""
    """``INGEST_TOKEN``: a trusted gateway's bearer token for ``POST /ingest`` (secret)."""
    device_token_secret: str = ""
    """``DEVICE_TOKEN_SECRET``: the secret device tokens derive from; empty: no device
    tokens (secret)."""
    device_token_secret_previous: str = ""
    """``DEVICE_TOKEN_SECRET_PREVIOUS``: the old secret, still accepted while devices move
    to the new one (secret)."""
    read_token: str = ""
    """``READ_TOKEN``: the token of the read routes; empty: they are open (secret)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "WebSettings":
        settings = cls(
            port=_int(env, "WEB_PORT", cls.port, minimum=1),
            bind=_str(env, "WEB_BIND", cls.bind),
            ingest_token=_token(env, "INGEST_TOKEN"),
            device_token_secret=_token(env, "DEVICE_TOKEN_SECRET"),
            device_token_secret_previous=_token(env, "DEVICE_TOKEN_SECRET_PREVIOUS"),
            read_token=_token(env, "READ_TOKEN"),
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
        return settings


@dataclass(frozen=True)
class WorkerSettings:
    """A worker process: its Faust app id and data, the disks it reports, its stall
    watchdog and its shutdown."""

    app_id: str = "devicestream"
    """``APP_ID``: Faust app id = the workers' Kafka consumer group."""
    data_dir: str = ".faust-data"
    """``DATA_DIR``: Faust's data directory (a folder per app id below it)."""
    disk_paths: str = ""
    """``DISK_PATHS``: comma-separated paths whose file systems' space ``/metrics`` reports;
    empty: ``data_dir`` (see ``watched_disks``)."""
    stall_seconds: float = 60.0
    """``STALL_SECONDS``: seconds a partition may have lag with no commit before it is
    stalled."""
    stall_exit: bool = True
    """``STALL_EXIT``: exit with status 69 on a stall; false: only report it."""
    shutdown_timeout: float = 25.0
    """``SHUTDOWN_TIMEOUT``: seconds a stopping worker may spend writing what it took."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "WorkerSettings":
        return cls(
            app_id=_str(env, "APP_ID", cls.app_id),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", cls.shutdown_timeout, minimum=1.0),
            data_dir=_str(env, "DATA_DIR", cls.data_dir),
            disk_paths=_str(env, "DISK_PATHS", cls.disk_paths),
            stall_seconds=_float(env, "STALL_SECONDS", cls.stall_seconds, minimum=1.0),
            stall_exit=_bool(env, "STALL_EXIT", cls.stall_exit),
        )

    def watched_disks(self) -> list[str]:
        """The paths whose file systems' space the worker reports (``DISK_PATHS``)."""
        return [p.strip() for p in self.disk_paths.split(",") if p.strip()] or [self.data_dir]


@dataclass(frozen=True)
class Settings:
    """All knobs of a worker, the simulator and the maintenance commands, by concern."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    db: DatabaseSettings = field(default_factory=DatabaseSettings)
    read_db: ReadDatabaseSettings = field(default_factory=ReadDatabaseSettings)
    query: QuerySettings = field(default_factory=QuerySettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    web: WebSettings = field(default_factory=WebSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    def as_owner(self) -> "Settings":
        """These settings connecting as the owner role, which runs the migrations."""
        return replace(self, db=self.db.as_owner())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        settings = cls(
            kafka=KafkaSettings.from_env(env),
            topics=TopicSettings.from_env(env),
            producer=ProducerSettings.from_env(env),
            db=DatabaseSettings.from_env(env),
            read_db=ReadDatabaseSettings.from_env(env),
            query=QuerySettings.from_env(env),
            sink=SinkSettings.from_env(env),
            storage=StorageSettings.from_env(env),
            web=WebSettings.from_env(env),
            worker=WorkerSettings.from_env(env),
        )
        if settings.web.port > 65535 or settings.db.port > 65535:
            raise ConfigError("WEB_PORT and DB_PORT must be <= 65535")
        if settings.db.pool_size <= settings.sink.writers:
            raise ConfigError(
                f"DB_POOL_SIZE ({settings.db.pool_size}) must be greater than SINK_WRITERS "
                f"({settings.sink.writers}): each writer holds a connection, and dead letters "
                "need one more"
            )
        return settings

    def watched_disks(self) -> list[str]:
        """The paths whose file systems' space the worker reports (``DISK_PATHS``)."""
        return self.worker.watched_disks()

    def redacted(self) -> dict[str, dict[str, Any]]:
        """The settings as a dict of groups with secrets masked, safe to log."""
        return {
            group.name: {
                f.name: "***" if _is_secret(f.name) else _shown(getattr(values, f.name))
                for f in fields(values)
            }
            for group in fields(self)
            for values in (getattr(self, group.name),)
        }

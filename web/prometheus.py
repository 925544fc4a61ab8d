"""``/metrics``: the pipeline, lag and database figures in Prometheus text format.

A custom collector turns the in-memory counters and the latest background samples into
metric families at scrape time: a scrape never queries the broker or the database.
Names follow Prometheus conventions: ``devicestream_`` prefix, base units (seconds,
bytes), ``_total`` for counters. Lag is exported as totals (worker and group), not per
partition: in per-device topic mode every device has its own topic, and a series per
partition would grow with the fleet. The registry also carries prometheus_client's process
collector (CPU, memory).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from streams.stats import PipelineStats
from web.lag import LagSample, max_lag_seconds, total_lag
from web.periodic import PeriodicSample
from web.read_route import FALLBACK_REASONS, TARGETS

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # our names are all legacy-valid: same text

_PIPELINE_COUNTERS = (
    ("messages", "messages_total", "Kafka messages taken from device topics"),
    ("points", "points_total", "Valid data points (one metric at one time) read"),
    ("rows_written", "rows_written_total", "Rows newly inserted into the readings table"),
    ("dead_letters", "dead_letters_total", "Invalid readings published to the dead-letter topic"),
    ("late_readings", "late_readings_total", "Readings that arrived after their time bucket"),
    ("sink_batches", "batches_total", "Batches made durable by the database sink"),
    ("sink_checked_points", "checked_points_total",
     "Points written the checked way (late, repeated or of series not yet known)"),
    ("sink_fast_path_fallbacks", "fast_path_fallbacks_total",
     "Batches whose fast path met keys already stored and were written again, checked"),
    ("sink_retries", "retries_total", "Retried database writes and dead-letter publishes"),
)


def _gauge(name: str, doc: str, value: float | None,
           labels: dict[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(name, doc, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), float(value))
    yield family


def pipeline_metrics(stats: PipelineStats) -> Iterator[Metric]:
    for name, attribute, doc in _PIPELINE_COUNTERS:
        family = CounterMetricFamily(f"devicestream_{name}", doc)
        family.add_metric([], getattr(stats, attribute))
        yield family
    yield from _gauge("devicestream_sink_last_batch_points",
                      "Data points in the last batch written", stats.last_batch_points)
    latency = GaugeMetricFamily(
        "devicestream_sink_write_latency_seconds",
        "Quantiles of recent batch write times (last 1024 batches)", labels=["quantile"])
    for quantile in (0.5, 0.99):
        value = stats.write_latency(quantile)
        if value is not None:
            latency.add_metric([str(quantile)], value)
    yield latency
    phases = CounterMetricFamily(
        "devicestream_sink_phase_seconds",
        "Seconds the sink spent finding series (resolve), in COPY (copy), and inserting "
        "checked rows, folding aggregates and committing (merge)", labels=["phase"])
    for phase, seconds in stats.sink_phase_seconds_total.items():
        phases.add_metric([phase], seconds)
    yield phases
    cache = stats.series_cache
    yield from _gauge("devicestream_sink_series_cached", "Series held in the sink's id cache",
                      cache.series)
    yield from _gauge(
        "devicestream_sink_series_cache_bytes",
        "The sink's series cache, by its own estimate (SINK_SERIES_CACHE_MB bounds it)",
        cache.bytes)
    resets = CounterMetricFamily(
        "devicestream_sink_series_cache_resets",
        "Times the sink's series cache started over to stay within SINK_SERIES_CACHE_MB")
    resets.add_metric([], cache.resets)
    yield resets
    yield from _gauge("devicestream_sink_db_available",
                      "1 when the last database write succeeded", int(stats.db_available))
    freshness = stats.freshness
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, freshness.bounds), "+Inf"), freshness.counts):
        cumulative += count
        buckets.append((bound, cumulative))
    histogram = HistogramMetricFamily(
        "devicestream_reading_freshness_seconds",
        "Seconds from a device's newest reading in a batch to the batch being durable "
        "(one observation per device and batch)")
    histogram.add_metric([], buckets, freshness.sum)
    yield histogram


def lag_metrics(sample: PeriodicSample[LagSample]) -> Iterator[Metric]:
    yield from _gauge("devicestream_lag_sample_age_seconds",
                      "Seconds since the lag was last measured", sample.age)
    lag = sample.value
    if lag is None:
        return
    messages = GaugeMetricFamily(
        "devicestream_consumer_lag_messages",
        "Messages of device topics not yet committed (worker: its own partitions)",
        labels=["scope"])
    partitions = GaugeMetricFamily(
        "devicestream_consumer_partitions", "Device-topic partitions", labels=["scope"])
    scopes = [("group", lag.group())]
    if lag.assignment_known:
        scopes.append(("worker", lag.own()))
    for scope, rows in scopes:
        partitions.add_metric([scope], len(rows))
        total = total_lag(rows)
        if total is not None:
            messages.add_metric([scope], total)
    yield messages
    yield partitions
    if lag.assignment_known:
        yield from _gauge("devicestream_consumer_lag_seconds",
                          "Age of the oldest message not yet committed, over this worker's "
                          "partitions (0 when none)", max_lag_seconds(lag.own()))
    sizes = (
        ("messages", "Messages retained in a device topic (log end - log start, all partitions)"),
        ("bytes", "Bytes a device topic's partitions take on their leaders' disks "
                  "(absent when the broker lacks DescribeLogDirs)"),
    )
    for figure, text in sizes:
        family = GaugeMetricFamily(f"devicestream_topic_{figure}", text, labels=["topic"])
        for topic, size in sorted(lag.topics.items()):
            value = getattr(size, figure)
            if value is not None:
                family.add_metric([topic], value)
        yield family


def _pgbouncer_metrics(bouncer: dict[str, Any]) -> Iterator[Metric]:
    labels = ["database", "user", "state"]
    clients = GaugeMetricFamily("devicestream_pgbouncer_client_connections",
                                "pgBouncer client connections", labels=labels)
    servers = GaugeMetricFamily("devicestream_pgbouncer_server_connections",
                                "pgBouncer server connections", labels=labels)
    max_wait = GaugeMetricFamily("devicestream_pgbouncer_max_wait_seconds",
                                 "Age of the oldest waiting client", labels=["database", "user"])
    for row in bouncer.get("pools", ()):
        key = [row["database"], row["user"]]
        for state in ("active", "waiting"):
            clients.add_metric(key + [state], row.get(f"cl_{state}", 0))
        for state in ("active", "idle", "used", "tested", "login"):
            servers.add_metric(key + [state], row.get(f"sv_{state}", 0))
        max_wait.add_metric(key, row.get("maxwait", 0) + row.get("maxwait_us", 0) / 1e6)
    yield from (clients, servers, max_wait)
    counters = (
        ("transactions", "total_xact_count", 1, "Transactions pooled by pgBouncer"),
        ("queries", "total_query_count", 1, "Queries pooled by pgBouncer"),
        ("received_bytes", "total_received", 1, "Bytes received from clients"),
        ("sent_bytes", "total_sent", 1, "Bytes sent to clients"),
        ("transaction_seconds", "total_xact_time", 1e-6, "Time spent in transactions"),
        ("query_seconds", "total_query_time", 1e-6, "Time spent in queries"),
        ("wait_seconds", "total_wait_time", 1e-6, "Time clients waited for a server"),
    )
    for name, column, scale, doc in counters:
        family = CounterMetricFamily(f"devicestream_pgbouncer_{name}", doc, labels=["database"])
        for row in bouncer.get("stats", ()):
            if column in row:
                family.add_metric([row["database"]], row[column] * scale)
        yield family


def _backup_metrics(backup: dict[str, Any] | None) -> Iterator[Metric]:
    """The newest backup recorded in storage.backups; 0 when none was ever recorded, so
    the BackupTooOld alert fires on a deployment that never took one."""
    if isinstance(backup, dict) and "error" in backup:
        return  # the table is not readable: nothing measured, no figure
    yield from _gauge("devicestream_db_last_backup_timestamp_seconds",
                      "When the newest recorded backup (make backup, the backup service) ended",
                      backup["finished_at"] if backup else 0)


def _archiver_metrics(archive: dict[str, Any]) -> Iterator[Metric]:
    """WAL archiving (pg_stat_archiver): the backups' point-in-time recovery depends on it."""
    if "error" in archive or not archive:
        return
    yield from _gauge("devicestream_db_wal_archiving", "1 when archive_mode is on",
                      int(bool(archive["enabled"])))
    for name, key, doc in (
            ("archived_segments", "archived_count", "WAL segments archived"),
            ("archive_failures", "failed_count", "Failed attempts to archive a WAL segment")):
        family = CounterMetricFamily(f"devicestream_db_wal_{name}", doc)
        family.add_metric([], archive[key] or 0)
        yield family
    for name, key, doc in (
            ("last_archived", "last_archived_at", "When a WAL segment was last archived"),
            ("last_archive_failure", "last_failed_at", "When archiving a segment last failed")):
        yield from _gauge(f"devicestream_db_wal_{name}_timestamp_seconds", f"{doc} (0: never)",
                          archive[key] or 0)


def _hypertable_metrics(tables: list[dict[str, Any]]) -> Iterator[Metric]:
    size = GaugeMetricFamily("devicestream_hypertable_bytes", "Hypertable size on disk",
                             labels=["hypertable", "kind"])
    rows = GaugeMetricFamily("devicestream_hypertable_rows",
                             "Estimated rows (approximate_row_count)", labels=["hypertable"])
    chunks = GaugeMetricFamily("devicestream_hypertable_chunks", "Chunks",
                               labels=["hypertable", "compressed"])
    newest = GaugeMetricFamily("devicestream_hypertable_newest_chunk_bytes",
                               "Size of the newest chunk (it should fit in memory)",
                               labels=["hypertable"])
    for table in tables:
        name = f"{table['schema']}.{table['name']}"
        for kind in ("table", "index", "toast"):
            size.add_metric([name, kind], table.get(f"{kind}_bytes") or 0)
        rows.add_metric([name], table.get("approximate_rows") or 0)
        compressed = table.get("compressed_chunks") or 0
        chunks.add_metric([name, "true"], compressed)
        chunks.add_metric([name, "false"], (table.get("chunks") or 0) - compressed)
        if table.get("newest_chunk"):
            newest.add_metric([name], table["newest_chunk"]["total_bytes"] or 0)
    yield from (size, rows, chunks, newest)


def database_metrics(sample: PeriodicSample[dict[str, Any]]) -> Iterator[Metric]:
    yield from _gauge("devicestream_db_sample_age_seconds",
                      "Seconds since the database state was last sampled", sample.age)
    state = sample.value
    if state is None:
        return
    yield from _gauge("devicestream_db_up", "1 when PostgreSQL answered the last sample",
                      int(bool(state.get("available"))))
    in_use = GaugeMetricFamily("devicestream_db_pool_connections",
                               "Connections of the worker's pools", labels=["pool", "state"])
    pool_max = GaugeMetricFamily("devicestream_db_pool_max_connections",
                                 "Maximum connections of the worker's pools", labels=["pool"])
    for name, usage in (state.get("pools") or {}).items():
        in_use.add_metric([name, "in_use"], usage["in_use"])
        in_use.add_metric([name, "idle"], usage["idle"])
        pool_max.add_metric([name], usage["max"])
    yield from (in_use, pool_max)
    bouncer = state.get("pgbouncer") or {}
    yield from _gauge("devicestream_pgbouncer_up",
                      "1 when pgBouncer's admin console answered the last sample",
                      int("error" not in bouncer))
    if "error" not in bouncer:
        yield from _pgbouncer_metrics(bouncer)
    postgres = state.get("postgres")
    if not postgres:
        return
    yield from _gauge("devicestream_db_size_bytes", "Size of the database",
                      postgres.get("database_bytes"))
    yield from _gauge("devicestream_db_backends", "Connections to the database",
                      postgres.get("connections"))
    yield from _gauge("devicestream_db_cache_hit_ratio",
                      "Share of block reads served from shared buffers",
                      postgres.get("cache_hit_ratio"))
    for name, key, doc in (
            ("blocks_hit", "blocks_hit_total", "Block reads from shared buffers"),
            ("blocks_read", "blocks_read_total", "Block reads from disk or OS cache")):
        if postgres.get(key) is not None:
            family = CounterMetricFamily(f"devicestream_db_{name}", doc)
            family.add_metric([], postgres[key])
            yield family
    wal = postgres.get("wal") or {}
    if wal.get("position_bytes") is not None:
        family = CounterMetricFamily("devicestream_db_wal_bytes",
                                     "WAL written since the cluster was created (LSN)")
        family.add_metric([], wal["position_bytes"])
        yield family
    yield from _gauge("devicestream_db_wal_directory_bytes", "Size of the WAL directory",
                      wal.get("directory_bytes"))
    yield from _archiver_metrics(wal.get("archive") or {})
    if "last_backup" in postgres:
        yield from _backup_metrics(postgres["last_backup"])
    if isinstance(state.get("replicas"), list):
        yield from _replica_metrics(state["replicas"])
    checkpoints = postgres.get("checkpoints") or {}
    if "error" not in checkpoints and checkpoints:
        family = CounterMetricFamily("devicestream_db_checkpoints", "Checkpoints",
                                     labels=["kind"])
        for kind in ("timed", "requested"):
            family.add_metric([kind], checkpoints.get(kind) or 0)
        yield family
    tables = state.get("hypertables")
    if isinstance(tables, list):
        yield from _hypertable_metrics(tables)
    compression = state.get("compression") or {}
    yield from _gauge("devicestream_db_compression_available",
                      "1 when TimescaleDB compression can be used",
                      int(not str(compression.get("state", "unavailable")).startswith("unavail")))
    yield from _gauge("devicestream_db_chunks_due_for_compression",
                      "Raw chunks past COMPRESS_AFTER_DAYS (and a day) still uncompressed; "
                      "0 where compression is unavailable", compression.get("chunks_due", 0))
    statements = state.get("top_statements")
    if isinstance(statements, list):
        calls = CounterMetricFamily("devicestream_db_statement_calls",
                                    "Calls of the top statements (pg_stat_statements)",
                                    labels=["queryid"])
        seconds = CounterMetricFamily("devicestream_db_statement_seconds",
                                      "Execution time of the top statements", labels=["queryid"])
        for row in statements:
            calls.add_metric([str(row["queryid"])], row["calls"])
            seconds.add_metric([str(row["queryid"])], row["total_seconds"])
        yield from (calls, seconds)


def _replica_metrics(replicas: list[dict[str, Any]]) -> Iterator[Metric]:
    """The primary's streaming replicas (pg_stat_replication)."""
    for name, key, doc in (
            ("seconds", "replay_lag_seconds", "How far a streaming replica's replay is behind"),
            ("bytes", "replay_lag_bytes", "WAL a streaming replica has yet to replay")):
        family = GaugeMetricFamily(f"devicestream_db_replica_lag_{name}", doc,
                                   labels=["replica"])
        for row in replicas:
            family.add_metric([row["application_name"] or row["client_addr"] or "?"],
                              row[key] or 0)
        yield family


def read_metrics(reads: dict[str, Any]) -> Iterator[Metric]:
    """Where the query routes read (``web.read_route.ReadRoute.state``)."""
    # Every label value from the start (0 until it happens), so that rates and alerts
    # have a series to work on.
    family = CounterMetricFamily("devicestream_reads", "Reads of the query routes",
                                 labels=["target"])
    for target in TARGETS:
        family.add_metric([target], reads["reads"].get(target, 0))
    yield family
    family = CounterMetricFamily(
        "devicestream_read_fallbacks", "Reads sent to the primary instead of the replica",
        labels=["reason"])
    for reason in FALLBACK_REASONS:
        family.add_metric([reason], reads["fallbacks"].get(reason, 0))
    yield family
    replica = reads.get("replica")
    if replica is not None:
        yield from _gauge("devicestream_read_replica_up",
                          "1 when the read replica answered its last lag sample",
                          int(replica["error"] is None and "standby" in replica))
        yield from _gauge("devicestream_read_replica_lag_seconds",
                          "The read replica's replay lag, measured on it",
                          replica.get("lag_seconds"))


class ReadsCollector(Collector):
    """Collects ``read_metrics`` from a callable giving the read route's state."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from read_metrics(self._state())


class PipelineCollector(Collector):
    """Collects everything above from the stats and the latest samples."""

    def __init__(self, stats: PipelineStats, lag: PeriodicSample[LagSample],
                 database: PeriodicSample[dict[str, Any]]) -> None:
        self._stats, self._lag, self._database = stats, lag, database

    def collect(self) -> Iterator[Metric]:
        yield from pipeline_metrics(self._stats)
        yield from lag_metrics(self._lag)
        yield from database_metrics(self._database)


class RegistersIn(Protocol):
    """What registers itself in a registry when called, as ProcessCollector does."""

    def __call__(self, *, registry: CollectorRegistry) -> object: ...


def metrics_registry(collector: Collector, process: RegistersIn | None = ProcessCollector,
                     ) -> CollectorRegistry:
    """A registry of our own (not the global one) with the collector and process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process is not None:
        process(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (version 0.0.4)."""
    return generate_latest(registry)

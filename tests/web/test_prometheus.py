"""The /metrics exposition from fake samples, read back with prometheus_client's parser."""
from __future__ import annotations

from typing import Any

import pytest
from aiokafka.structs import TopicPartition as TP
from prometheus_client.parser import text_string_to_metric_families

from sinks.timescale import CacheState, WriteResult
from streams.stats import PipelineStats
from tests.stack import fake_sample
from web.host_metrics import HostCollector
from web.lag import LagSample, PartitionLag, TopicSize
from web.prometheus import (
    PipelineCollector,
    ReadsCollector,
    exposition,
    metrics_registry,
)

DB_STATE = {
    "available": True,
    "pools": {"ingest": {"size": 3, "idle": 1, "in_use": 2, "max": 4}},
    "pgbouncer": {
        "pools": [{"database": "devicestream", "user": "devicestream", "cl_active": 5,
                   "cl_waiting": 1, "sv_active": 2, "sv_idle": 3, "sv_used": 0, "sv_tested": 0,
                   "sv_login": 0, "maxwait": 1, "maxwait_us": 500000}],
        "stats": [{"database": "devicestream", "total_xact_count": 42, "total_query_count": 84,
                   "total_received": 1000, "total_sent": 2000, "total_xact_time": 3_000_000,
                   "total_query_time": 2_000_000, "total_wait_time": 250_000}],
    },
    "postgres": {"database_bytes": 123456, "connections": 7, "cache_hit_ratio": 0.99,
                 "blocks_hit_total": 990, "blocks_read_total": 10,
                 "wal": {"position_bytes": 5_000_000, "directory_bytes": 16_777_216,
                         "archive": {"enabled": True, "archived_count": 41, "failed_count": 2,
                                     "last_archived_wal": "000000010000000000000029",
                                     "last_failed_wal": "000000010000000000000027",
                                     "last_archived_at": 1_700_000_100.5,
                                     "last_failed_at": 1_700_000_000.0}},
                 "last_backup": {"label": "20261204-101500F", "type": "full",
                                 "finished_at": 1_700_000_050.0, "database_bytes": 9,
                                 "stored_bytes": 3, "recorded": 1},
                 "checkpoints": {"timed": 4, "requested": 1}},
    "hypertables": [{"schema": "public", "name": "readings", "table_bytes": 1000,
                     "index_bytes": 500, "toast_bytes": 8, "total_bytes": 1508,
                     "approximate_rows": 77, "chunks": 3, "compressed_chunks": 1,
                     "compression_enabled": True, "largest_chunk_bytes": 900,
                     "newest_chunk": {"name": "c3", "range_start": None, "range_end": None,
                                      "total_bytes": 300}}],
    "compression": {"state": "unavailable: apache build"},
    "replicas": [{"application_name": "replica-1", "client_addr": "10.0.0.9",
                  "state": "streaming", "sync_state": "async", "replay_lag_bytes": 4096,
                  "replay_lag_seconds": 0.25}],
    "top_statements": [{"queryid": -12, "calls": 9, "total_seconds": 0.5, "mean_seconds": 0.05,
                        "rows": 1, "query": "SELECT 1"}],
}


def _scrape(stats: PipelineStats, lag: Any, db: Any) -> dict[str, Any]:
    collector = PipelineCollector(stats, fake_sample(lag, age=2), fake_sample(db, age=2))
    registry = metrics_registry(collector, process=None)
    text = exposition(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v
                                                  for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{sample_name} {labels}")


def test_every_figure_is_exported_with_prometheus_names_and_units() -> None:
    stats = PipelineStats()
    stats.messages_total, stats.points_total, stats.dead_letters_total = 10, 30, 2
    stats.record_batch(WriteResult(30, 28, checked=4, fallbacks=1, resolve_seconds=0.125,
                                   copy_seconds=0.5, merge_seconds=0.75), 0.25)
    stats.series_cache = CacheState(series=5_000_000, bytes=300_000_000, resets=2)
    lag = LagSample(
        partitions={TP("device-data-a", 0): PartitionLag("device-data-a", 0, 5, 9),
                    TP("device-data-b", 0): PartitionLag("device-data-b", 0, 0, 4)},
        assigned=frozenset({TP("device-data-a", 0)}), assignment_known=True)

    families = _scrape(stats, lag, DB_STATE)

    assert families["devicestream_messages"].type == "counter"
    assert _value(families, "devicestream_messages_total") == 10
    assert _value(families, "devicestream_points_total") == 30
    assert _value(families, "devicestream_rows_written_total") == 28
    assert _value(families, "devicestream_dead_letters_total") == 2
    assert _value(families, "devicestream_sink_checked_points_total") == 4
    assert _value(families, "devicestream_sink_fast_path_fallbacks_total") == 1
    assert _value(families, "devicestream_sink_phase_seconds_total", phase="resolve") == 0.125
    assert _value(families, "devicestream_sink_phase_seconds_total", phase="copy") == 0.5
    assert _value(families, "devicestream_sink_phase_seconds_total", phase="merge") == 0.75
    assert _value(families, "devicestream_sink_series_cached") == 5_000_000
    assert _value(families, "devicestream_sink_series_cache_bytes") == 300_000_000
    assert _value(families, "devicestream_sink_series_cache_resets_total") == 2
    assert _value(families, "devicestream_sink_write_latency_seconds", quantile="0.99") == 0.25
    assert _value(families, "devicestream_consumer_lag_messages", scope="worker") == 4
    assert _value(families, "devicestream_consumer_lag_messages", scope="group") == 8
    assert _value(families, "devicestream_consumer_partitions", scope="group") == 2
    assert 1 < _value(families, "devicestream_lag_sample_age_seconds") < 60
    assert _value(families, "devicestream_db_up") == 1
    assert _value(families, "devicestream_db_pool_connections", pool="ingest", state="in_use") == 2
    assert _value(families, "devicestream_pgbouncer_client_connections",
                  database="devicestream", state="waiting") == 1
    assert _value(families, "devicestream_pgbouncer_max_wait_seconds") == pytest.approx(1.5)
    assert _value(families, "devicestream_pgbouncer_transactions_total") == 42
    assert _value(families, "devicestream_pgbouncer_transaction_seconds_total") == 3.0
    assert _value(families, "devicestream_db_size_bytes") == 123456
    assert _value(families, "devicestream_db_cache_hit_ratio") == pytest.approx(0.99)
    assert _value(families, "devicestream_db_wal_bytes_total") == 5_000_000
    assert _value(families, "devicestream_db_wal_directory_bytes") == 16_777_216
    assert _value(families, "devicestream_db_wal_archiving") == 1
    assert _value(families, "devicestream_db_wal_archived_segments_total") == 41
    assert _value(families, "devicestream_db_wal_archive_failures_total") == 2
    assert _value(families, "devicestream_db_wal_last_archived_timestamp_seconds") == 1_700_000_100.5
    assert _value(families, "devicestream_db_wal_last_archive_failure_timestamp_seconds") == \
        1_700_000_000.0
    assert _value(families, "devicestream_db_last_backup_timestamp_seconds") == 1_700_000_050.0
    assert _value(families, "devicestream_db_checkpoints_total", kind="requested") == 1
    assert _value(families, "devicestream_hypertable_bytes",
                  hypertable="public.readings", kind="index") == 500
    assert _value(families, "devicestream_hypertable_rows", hypertable="public.readings") == 77
    assert _value(families, "devicestream_hypertable_chunks",
                  hypertable="public.readings", compressed="false") == 2
    assert _value(families, "devicestream_hypertable_newest_chunk_bytes",
                  hypertable="public.readings") == 300
    assert _value(families, "devicestream_db_compression_available") == 0
    assert _value(families, "devicestream_db_statement_seconds_total", queryid="-12") == 0.5
    for family in families.values():
        assert family.name.startswith("devicestream_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_unmeasured_figures_are_left_out_not_zero() -> None:
    lag = LagSample(partitions={TP("device-data-a", 0): PartitionLag("device-data-a", 0, 5, None)},
                    assigned=frozenset(), assignment_known=False)
    down = {"available": False, "error": "OSError: refused", "pools": {},
            "pgbouncer": {"error": "OSError: refused"}, "postgres": None, "hypertables": None,
            "compression": None, "top_statements": None}

    families = _scrape(PipelineStats(), lag, down)

    with pytest.raises(KeyError):
        _value(families, "devicestream_consumer_lag_messages", scope="group")
    with pytest.raises(KeyError):
        _value(families, "devicestream_consumer_partitions", scope="worker")
    with pytest.raises(KeyError):
        _value(families, "devicestream_sink_write_latency_seconds", quantile="0.5")
    assert _value(families, "devicestream_db_up") == 0
    assert _value(families, "devicestream_pgbouncer_up") == 0
    assert "devicestream_db_size_bytes" not in families


def test_before_any_sample_the_scrape_still_works() -> None:
    families = _scrape(PipelineStats(), None, None)
    assert _value(families, "devicestream_messages_total") == 0
    assert "devicestream_db_up" not in families


@pytest.mark.parametrize("recorded, exported", [
    (None, 0.0),  # no backup ever recorded: as old as can be, BackupTooOld fires
    ({"error": "relation \"storage.backups\" does not exist"}, None),  # not measured
])
def test_backup_age_without_a_recorded_backup(recorded: Any, exported: float | None) -> None:
    state = {**DB_STATE, "postgres": {**DB_STATE["postgres"], "last_backup": recorded}}
    families = _scrape(PipelineStats(), None, state)
    if exported is None:
        assert "devicestream_db_last_backup_timestamp_seconds" not in families
    else:
        assert _value(families, "devicestream_db_last_backup_timestamp_seconds") == exported


def test_lag_seconds_freshness_topic_size_and_compression_backlog() -> None:
    stats = PipelineStats()
    stats.record_freshness([9_000_000, 8_000_000, 1_000_000], durable_us=10_000_000)
    lag = LagSample(
        partitions={TP("device-data-a", 0): PartitionLag("device-data-a", 0, 5, 9, 12.5),
                    TP("device-data-a", 1): PartitionLag("device-data-a", 1, 9, 9, 0.0),
                    TP("device-data-b", 0): PartitionLag("device-data-b", 0, 0, 4, 99.0)},
        assigned=frozenset({TP("device-data-a", 0), TP("device-data-a", 1)}),
        assignment_known=True,
        topics={"device-data-a": TopicSize(1234, 56_789), "device-data-b": TopicSize(4, None)})
    state = {**DB_STATE, "compression": {"state": "enabled", "chunks_due": 3}}

    families = _scrape(stats, lag, state)

    assert families["devicestream_reading_freshness_seconds"].type == "histogram"
    buckets = {s.labels["le"]: s.value for s in
               families["devicestream_reading_freshness_seconds"].samples
               if s.name.endswith("_bucket")}
    assert (buckets["0.5"], buckets["1.0"], buckets["2.5"], buckets["10.0"],
            buckets["+Inf"]) == (0, 1, 2, 3, 3), "cumulative: ages 1, 2 and 9 s"
    assert _value(families, "devicestream_reading_freshness_seconds_sum") == 12.0
    assert _value(families, "devicestream_consumer_lag_seconds") == 12.5, \
        "the worker's own partitions only"
    assert _value(families, "devicestream_topic_messages", topic="device-data-a") == 1234
    assert _value(families, "devicestream_topic_messages", topic="device-data-b") == 4
    assert _value(families, "devicestream_topic_bytes", topic="device-data-a") == 56_789
    with pytest.raises(KeyError):  # not measured: absent, never a zero
        _value(families, "devicestream_topic_bytes", topic="device-data-b")
    assert _value(families, "devicestream_db_chunks_due_for_compression") == 3


def test_host_figures_come_from_the_machine() -> None:
    registry = metrics_registry(HostCollector(["/", "/no/such/path"]), process=None)
    families = {f.name: f for f in text_string_to_metric_families(exposition(registry).decode())}
    assert _value(families, "devicestream_host_cpu_seconds_total", mode="idle") > 0
    assert _value(families, "devicestream_host_memory_bytes", state="total") > \
        _value(families, "devicestream_host_memory_bytes", state="available") > 0
    assert 0 < _value(families, "devicestream_host_disk_free_bytes", path="/") <= \
        _value(families, "devicestream_host_disk_size_bytes", path="/")
    with pytest.raises(KeyError):  # a path that does not exist has no figure, not a zero
        _value(families, "devicestream_host_disk_size_bytes", path="/no/such/path")
    assert _value(families, "devicestream_host_network_bytes_total", direction="received") >= 0


def test_replica_lag_and_read_fallbacks_are_exported() -> None:
    families = _scrape(PipelineStats(), None, DB_STATE)
    assert _value(families, "devicestream_db_replica_lag_seconds", replica="replica-1") == 0.25
    assert _value(families, "devicestream_db_replica_lag_bytes", replica="replica-1") == 4096

    reads = {"target": "primary", "fallback_reason": "replica_lagging",
             "reads": {"replica": 7, "primary": 3}, "fallbacks": {"replica_lagging": 3},
             "max_lag_seconds": 5.0,
             "replica": {"standby": True, "lag_seconds": 6.5, "lag_bytes": 100, "error": None,
                         "sample_age_seconds": 0.4}}
    registry = metrics_registry(ReadsCollector(lambda: reads), process=None)
    families = {f.name: f for f in text_string_to_metric_families(exposition(registry).decode())}
    assert _value(families, "devicestream_reads_total", target="replica") == 7
    assert _value(families, "devicestream_reads_total", target="primary") == 3
    assert _value(families, "devicestream_read_fallbacks_total", reason="replica_lagging") == 3
    assert _value(families, "devicestream_read_replica_up") == 1
    assert _value(families, "devicestream_read_replica_lag_seconds") == 6.5

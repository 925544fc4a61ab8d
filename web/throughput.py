"""The JSON of ``/pipeline/throughput``: the worker's pipeline counters and rates.

Everything comes from ``PipelineStats`` in memory (totals bumped by the ingest pipeline,
rates over the last 10 s from samples taken once a second), so answering costs nothing.
The first seven keys are the contract's; the rest are ours.
"""
from __future__ import annotations

import time
from typing import Any

from streams.stats import PipelineStats


def throughput_report(stats: PipelineStats) -> dict[str, Any]:
    messages_rate, points_rate, rows_rate, dead_letters_rate = stats.rates()
    return {
        "messages_total": stats.messages_total,
        "points_total": stats.points_total,
        "rows_written_total": stats.rows_written_total,
        "dead_letters_total": stats.dead_letters_total,
        "messages_per_second": messages_rate,
        "points_per_second": points_rate,
        "rows_per_second": rows_rate,
        "dead_letters_per_second": dead_letters_rate,
        "late_readings_total": stats.late_readings_total,
        "sink_batches_total": stats.batches_total,
        "sink_last_batch_points": stats.last_batch_points,
        "sink_retries_total": stats.retries_total,
        "sink_checked_points_total": stats.checked_points_total,
        "sink_fast_path_fallbacks_total": stats.fast_path_fallbacks_total,
        "sink_phase_seconds_total": dict(stats.sink_phase_seconds_total),
        "sink_series_cached": stats.series_cache.series,
        "sink_series_cache_bytes": stats.series_cache.bytes,
        "sink_series_cache_resets_total": stats.series_cache.resets,
        "write_latency_p50_seconds": stats.write_latency(0.5),
        "write_latency_p99_seconds": stats.write_latency(0.99),
        # Upper bounds of the freshness histogram's buckets (see /metrics).
        "freshness_p50_seconds": stats.freshness.quantile(0.5),
        "freshness_p99_seconds": stats.freshness.quantile(0.99),
        "db_available": stats.db_available,
        "uptime_seconds": time.monotonic() - stats.started,
    }

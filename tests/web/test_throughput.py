"""The JSON of /pipeline/throughput from known counters."""
from __future__ import annotations

import pytest

from sinks.timescale import WriteResult
from streams.stats import PipelineStats
from web.throughput import throughput_report

CONTRACT_KEYS = {"messages_total", "points_total", "rows_written_total", "dead_letters_total",
                 "messages_per_second", "points_per_second", "rows_per_second"}


def test_totals_rates_and_sink_figures() -> None:
    stats = PipelineStats(started=100.0)
    stats.sample(now=100.0)
    stats.messages_total, stats.points_total = 500, 1500
    stats.dead_letters_total, stats.late_readings_total = 20, 3
    for seconds in [0.010, 0.020, 0.030, 0.040, 1.0]:
        stats.record_batch(WriteResult(300, 290, checked=10, fallbacks=1, resolve_seconds=0.5,
                                       copy_seconds=0.25, merge_seconds=1.0), seconds)
    stats.sample(now=105.0)  # 5 s later

    report = throughput_report(stats)

    assert CONTRACT_KEYS <= report.keys()
    assert report["messages_total"] == 500
    assert report["rows_written_total"] == 5 * 290
    assert report["messages_per_second"] == pytest.approx(100.0)
    assert report["points_per_second"] == pytest.approx(300.0)
    assert report["rows_per_second"] == pytest.approx(290.0)
    assert report["dead_letters_per_second"] == pytest.approx(4.0)
    assert report["late_readings_total"] == 3
    assert report["sink_batches_total"] == 5
    assert report["sink_last_batch_points"] == 300
    assert report["sink_checked_points_total"] == 5 * 10
    assert report["sink_fast_path_fallbacks_total"] == 5
    assert report["sink_phase_seconds_total"] == {"resolve": 2.5, "copy": 1.25, "merge": 5.0}
    assert (report["sink_series_cached"], report["sink_series_cache_resets_total"]) == (0, 0)
    assert report["write_latency_p50_seconds"] == pytest.approx(0.030)
    assert report["write_latency_p99_seconds"] == pytest.approx(1.0)


def test_rates_only_cover_the_last_ten_seconds() -> None:
    stats = PipelineStats(started=0.0)
    for second in range(0, 31):
        stats.messages_total = 1000 if second < 20 else 1000 + 10 * (second - 20)
        stats.sample(now=float(second))
    assert throughput_report(stats)["messages_per_second"] == pytest.approx(10.0)


def test_a_fresh_worker_reports_zeros_and_no_latency() -> None:
    report = throughput_report(PipelineStats())
    assert all(report[key] == 0 for key in CONTRACT_KEYS)
    assert report["write_latency_p50_seconds"] is None
    assert report["write_latency_p99_seconds"] is None


def test_work_done_before_the_first_sample_shows_in_the_first_rates() -> None:
    stats = PipelineStats(started=0.0)
    stats.messages_total = 50  # all of it before the sampler first ran
    stats.sample(now=2.0)
    assert throughput_report(stats)["messages_per_second"] == pytest.approx(25.0)

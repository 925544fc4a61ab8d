"""tests/deploy/monitoring.py: the helpers that read the monitoring files."""
from __future__ import annotations

import pytest

from tests.deploy.monitoring import (
    KNOWN_METRICS, alert_rules, dashboard_promql, dashboard_sql, github_anchor,
    markdown_anchors, metric_names, sql_relations, substitute_promql_variables,
    substitute_sql_macros,
)


# --- metric_names --------------------------------------------------------------------------

@pytest.mark.parametrize("expr, names", [
    ("up", {"up"}),
    ('up{job="devicestream-worker"} == 0', {"up"}),
    ('absent(up{job="devicestream-worker"} == 1)', {"up"}),
    ("rate(devicestream_points_total[5m])", {"devicestream_points_total"}),
    ("sum by (job, le) (rate(devicestream_reading_freshness_seconds_bucket[5m]))",
     {"devicestream_reading_freshness_seconds_bucket"}),
    ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[$__rate_interval])))", {"a_bucket"}),
    ("sum(rate(a_total[5m])) by (instance) / on(instance) group_left(path) b",
     {"a_total", "b"}),
    ("a / ignoring(kind) b unless c and on() d or e", {"a", "b", "c", "d", "e"}),
    ("sum without (instance, job) (a)", {"a"}),
    ("count_values(\"version\", build_info)", {"build_info"}),
    ('label_replace(up, "host", "$1", "instance", "(.*):6066")', {"up"}),
    ("a offset 5m > bool 1e3", {"a"}),
    ("max_over_time(a[1h:5m]) > Inf or b < -NaN", {"a", "b"}),
    ("topk(3, a) + quantile(0.9, b) + vector(1) + time()", {"a", "b"}),
    ("rate(a[5m] @ end())", {"a"}),
    ('{__name__="devicestream_ready", instance="x"}', {"devicestream_ready"}),
    ("recorded:rate5m:sum", {"recorded:rate5m:sum"}),
    ('a{path=~"/var/{x}", le="+Inf"}', {"a"}),
    ("SUM BY (le) (a)", {"a"}),
    ("0.99", set()),
])
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_metric_names_never_returns_label_names_of_the_rules():
    labels = {"job", "instance", "le", "quantile", "path", "scope", "mode", "state",
              "direction", "hypertable", "kind", "compressed"}
    for rule in alert_rules():
        assert not metric_names(rule["expr"]) & labels, rule["alert"]
    for expr in dashboard_promql():
        assert not metric_names(expr) & labels, expr


def test_known_metrics_include_the_histogram_series():
    for suffix in ("_bucket", "_sum", "_count"):
        assert f"devicestream_reading_freshness_seconds{suffix}" in KNOWN_METRICS
    assert "devicestream_reading_freshness_seconds" not in KNOWN_METRICS


# --- Grafana substitutions -----------------------------------------------------------------

def test_promql_variables_become_durations():
    assert substitute_promql_variables("rate(a[$__rate_interval])") == "rate(a[1m])"
    assert substitute_promql_variables("increase(a[$__range])") == "increase(a[1h])"
    assert substitute_promql_variables("avg_over_time(a[$__interval])") == "avg_over_time(a[15s])"
    with pytest.raises(ValueError):
        substitute_promql_variables('a{instance="$instance"}')


def test_sql_macros_become_plain_sql():
    assert (substitute_sql_macros("SELECT 1 FROM readings WHERE $__timeFilter(time)")
            == "SELECT 1 FROM readings WHERE time > now() - interval '1 hour'")
    assert (substitute_sql_macros("WHERE bucket BETWEEN $__timeFrom() AND $__timeTo()")
            == "WHERE bucket BETWEEN (now() - interval '1 hour') AND now()")
    for text in ("$__timeGroup(time, '1m')", "WHERE device_id = '$device'", "$__timeFilter()"):
        with pytest.raises(ValueError):
            substitute_sql_macros(text)


def test_dashboard_queries_come_out_substituted():
    assert all("$" not in expr for expr in dashboard_promql())
    assert all("$" not in sql for sql in dashboard_sql())
    assert any("now() - interval '1 hour'" in sql for sql in dashboard_sql())


def test_dashboard_helpers_read_a_given_dashboard():
    prom = {"type": "prometheus", "uid": "p"}
    pg = {"type": "grafana-postgresql-datasource", "uid": "s"}
    board = {"panels": [
        {"type": "timeseries", "datasource": prom, "targets": [{"expr": "rate(a[$__rate_interval])"}]},
        {"type": "row", "panels": [
            {"type": "table", "datasource": pg,
             "targets": [{"rawSql": "SELECT * FROM devices WHERE $__timeFilter(last_seen)"}]},
            {"type": "stat", "targets": [{"datasource": prom, "expr": "b"}]},
        ]},
    ]}
    assert dashboard_promql(board) == ["rate(a[1m])", "b"]
    assert dashboard_sql(board) == [
        "SELECT * FROM devices WHERE last_seen > now() - interval '1 hour'"]


# --- sql_relations -------------------------------------------------------------------------

@pytest.mark.parametrize("sql, relations", [
    ("SELECT count(*) FROM devices", {"devices"}),
    ("select * from readings_1m r join devices d using (device_id)", {"readings_1m", "devices"}),
    ("SELECT x FROM timescaledb_information.hypertables h LEFT JOIN "
     "timescaledb_information.chunks c ON true",
     {"timescaledb_information.hypertables", "timescaledb_information.chunks"}),
    ('SELECT 1 FROM "Readings"', {"readings"}),
    ("SELECT 'from nowhere' FROM readings -- from comments\n", {"readings"}),
    ("SELECT count(*) FILTER (WHERE true) FROM (SELECT 1 FROM devices) s", {"devices"}),
])
def test_sql_relations(sql, relations):
    assert sql_relations(sql) == relations


# --- Markdown anchors ----------------------------------------------------------------------

def test_github_anchors():
    assert github_anchor("Alert: ConsumerLagHigh") == "alert-consumerlaghigh"
    assert github_anchor("Prometheus and Grafana") == "prometheus-and-grafana"
    assert markdown_anchors("# Top\ntext\n### Alert: WorkerDown\n") == {"top", "alert-workerdown"}

"""The Prometheus rules and config, and the Grafana dashboard, say what they must.

promtool (Debian's `prometheus` package, installed by `make setup`) checks and unit-tests
the alert rules; the rest is parsed here. No network, no running Prometheus or Grafana.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy import monitoring
from tests.deploy.monitoring import (
    KNOWN_METRICS, KNOWN_RELATIONS, SEVERITIES, WORKER_JOB, alert_rules, alert_tests,
    dashboard, dashboard_promql, dashboard_sql, load_yaml, metric_names, panels,
    sql_relations,
)

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: run `make setup` (Debian package `prometheus`)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120,
                          cwd=monitoring.ROOT)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


# --- promtool ------------------------------------------------------------------------------

def test_promtool_accepts_the_alert_rules():
    assert_ok(promtool("check", "rules", str(monitoring.ALERTS_FILE)))


def test_promtool_unit_tests_of_the_alerts_pass():
    result = promtool("test", "rules", str(monitoring.ALERTS_TEST_FILE))
    assert_ok(result)
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config(tmp_path: Path):
    # A copy, with the rule file next to it as in the container (/etc/prometheus/).
    config = load_yaml(monitoring.PROMETHEUS_CONFIG)
    for rule_file in config["rule_files"]:
        assert not Path(rule_file).is_absolute(), "rule_files must be relative to the config"
        shutil.copy(monitoring.PROMETHEUS_DIR / rule_file, tmp_path / rule_file)
    shutil.copy(monitoring.PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    for job in config["scrape_configs"]:  # the token file the compose service writes
        if "authorization" in job:
            (tmp_path / job["authorization"]["credentials_file"]).write_text("token")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert_ok(result)
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_prometheus_scrapes_every_worker_replica_and_loads_the_alerts():
    config = load_yaml(monitoring.PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs[WORKER_JOB]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = worker["dns_sd_configs"]
    assert discovery["type"] == "A"
    assert discovery["port"] == 6066
    assert discovery["names"] == ["worker"]  # the compose service: one A record per replica
    interval = config["global"]["evaluation_interval"]
    assert DURATION.match(interval) and DURATION.match(config["global"]["scrape_interval"])


# --- the alerts ----------------------------------------------------------------------------

def test_there_are_enough_alerts_with_unique_names():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) >= 8
    assert len(names) == len(set(names))
    assert {group["name"] for group in load_yaml(monitoring.ALERTS_FILE)["groups"]} == {"devicestream"}


def test_every_alert_has_for_severity_summary_and_runbook():
    for rule in alert_rules():
        name = rule["alert"]
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: no `for`"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        assert annotations.get("runbook") == f"docs/alerts.md#alert-{name.lower()}", name


def test_every_alert_is_tested_firing_and_not_firing():
    names = {rule["alert"] for rule in alert_rules()}
    firing = {case["alertname"] for case in alert_tests() if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in alert_tests() if not case.get("exp_alerts")}
    assert not names - firing, f"never tested firing: {sorted(names - firing)}"
    assert not names - quiet, f"never tested quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, "tests of alerts that do not exist"


def test_firing_cases_expect_the_rules_labels():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for case in alert_tests():
        for alert in case.get("exp_alerts") or []:
            rule = rules[case["alertname"]]
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert alert["exp_annotations"]["runbook"] == rule["annotations"]["runbook"]


def test_alerts_use_only_the_workers_metrics():
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= KNOWN_METRICS, f"{rule['alert']}: unknown {sorted(used - KNOWN_METRICS)}"


def test_alerts_named_in_the_brief_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "WorkerDown", "ConsumerLagHigh", "IngestStalled", "DeadLettersHigh",
        "DatabaseUnavailable", "WriteLatencyHigh", "DiskSpaceLow", "CompressionBehind",
        "WorkerNotReady", "FreshnessHigh",
    } <= names


def test_database_unavailable_fires_within_two_minutes():
    (rule,) = [r for r in alert_rules() if r["alert"] == "DatabaseUnavailable"]
    assert "devicestream_db_up" in metric_names(rule["expr"])
    seconds = sum(int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
                  for n, unit in re.findall(r"(\d+)(ms|s|m|h)", rule["for"]))
    # plus a scrape interval and an evaluation interval (15 s each) and the worker's sample
    assert seconds <= 60
    assert rule["labels"]["severity"] == "page"


def test_every_alert_has_a_runbook_section():
    """Each runbook annotation names docs/alerts.md and a heading that exists there."""
    runbooks = monitoring.RUNBOOKS_FILE.read_text(encoding="utf-8")
    assert runbooks.startswith("# Alerts and runbooks\n"), monitoring.RUNBOOKS_FILE
    anchors = monitoring.markdown_anchors(runbooks)
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert monitoring.ROOT / path == monitoring.RUNBOOKS_FILE, rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: docs/alerts.md has no heading for #{anchor}"


def test_every_runbook_section_has_an_alert():
    """No runbook for an alert that was removed or renamed."""
    runbooks = monitoring.RUNBOOKS_FILE.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## Alert: (\S+)\s*$", runbooks, re.MULTILINE))
    assert sections == {rule["alert"] for rule in alert_rules()}


# --- the dashboard -------------------------------------------------------------------------

def test_dashboard_has_enough_panels_with_unique_ids():
    board = dashboard()
    found = panels(board)
    assert len(found) >= 8
    ids = [panel["id"] for panel in found]
    assert len(ids) == len(set(ids))
    assert board["uid"] and board["title"]
    for panel in found:
        assert panel.get("title") and panel.get("targets"), panel.get("id")
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]


def test_dashboard_queries_only_the_provisioned_datasources():
    provisioned = {source["uid"]: source["type"]
                   for source in load_yaml(monitoring.DATASOURCES_FILE)["datasources"]}
    for panel in panels():
        for target in panel["targets"]:
            source = target.get("datasource") or panel["datasource"]
            assert provisioned.get(source["uid"]) == source["type"], panel["title"]


def test_every_dashboard_query_is_promql_or_sql():
    queries = sum(len(panel["targets"]) for panel in panels())
    assert len(dashboard_promql()) + len(dashboard_sql()) == queries


def test_dashboard_promql_uses_only_the_workers_metrics():
    expressions = dashboard_promql()
    assert expressions
    used = set()
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr
        assert names <= KNOWN_METRICS, f"{expr}: unknown {sorted(names - KNOWN_METRICS)}"
        used |= names
    # The panels: throughput, lag (s and messages), dead letters, latency,
    # freshness, database size and chunks, readiness and stalls, host.
    for metric in (
        "devicestream_points_total", "devicestream_rows_written_total",
        "devicestream_consumer_lag_seconds", "devicestream_consumer_lag_messages",
        "devicestream_dead_letters_total", "devicestream_sink_write_latency_seconds",
        "devicestream_reading_freshness_seconds_bucket", "devicestream_hypertable_bytes",
        "devicestream_hypertable_chunks", "devicestream_ready", "devicestream_stalled_partitions",
        "devicestream_host_cpu_seconds_total", "devicestream_host_memory_bytes",
        "devicestream_host_disk_free_bytes",
    ):
        assert metric in used, metric


def test_dashboard_sql_reads_only_contract_tables_and_timescaledb_views():
    queries = dashboard_sql()
    assert queries
    for sql in queries:
        assert "$" not in sql
        relations = sql_relations(sql)
        assert relations, sql
        assert relations <= KNOWN_RELATIONS, f"{sql}: unknown {sorted(relations - KNOWN_RELATIONS)}"
        assert not re.search(r"\b(insert|update|delete|drop|truncate|alter|create)\b", sql, re.I)


# --- Grafana provisioning ------------------------------------------------------------------

def test_grafana_datasources_point_at_the_compose_services():
    sources = {source["type"]: source for source in load_yaml(monitoring.DATASOURCES_FILE)["datasources"]}
    prometheus = sources["prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["isDefault"] is True
    (postgres,) = [s for t, s in sources.items() if "postgres" in t]
    assert postgres["url"].split(":")[0] == "timescaledb"
    assert postgres["jsonData"]["database"] == "devicestream"
    assert re.fullmatch(r"\$\{?[A-Z_]+\}?", postgres["user"])              # from the environment
    assert re.fullmatch(r"\$\{?[A-Z_]+\}?", postgres["secureJsonData"]["password"])
    assert len({s["uid"] for s in sources.values()}) == len(sources)


def test_grafana_loads_the_dashboards_from_files():
    (provider,) = load_yaml(monitoring.DASHBOARD_PROVIDERS_FILE)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")

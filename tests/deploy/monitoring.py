"""The monitoring files (deploy/prometheus/, deploy/grafana/) as data, for the tests.

- ``alert_rules()``: every alerting rule of alerts.yml (dicts as written there).
- ``alert_tests()``: every ``alert_rule_test`` case of alerts_test.yml.
- ``dashboard_promql()``: every PromQL expression of the Grafana dashboard, with Grafana's
  interval variables replaced, so a real Prometheus can evaluate them as they are.
- ``dashboard_sql()``: every SQL query of the dashboard, with Grafana's macros replaced by
  plain SQL (``$__timeFilter(time)`` -> ``time > now() - interval '1 hour'``), so
  PostgreSQL can run them as they are.
- ``metric_names(promql)``: the metric names an expression reads.
- ``sql_relations(sql)``: the tables and views a query reads.
- ``KNOWN_METRICS`` / ``KNOWN_RELATIONS``: what the files may use.

No network and no third-party code but PyYAML.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "devicestream.json"
RUNBOOKS_FILE = ROOT / "docs" / "alerts.md"  # one "## Alert: <name>" section per alert

WORKER_JOB = "devicestream-worker"
SEVERITIES = ("page", "ticket")

# What the worker exports on /metrics (issue #16), plus Prometheus' own `up`.
_HISTOGRAMS = ("devicestream_reading_freshness_seconds",)
KNOWN_METRICS = frozenset({
    "up",
    # pipeline
    "devicestream_messages_total",
    "devicestream_points_total",
    "devicestream_rows_written_total",
    "devicestream_dead_letters_total",
    "devicestream_sink_retries_total",
    "devicestream_sink_batches_total",
    "devicestream_sink_checked_points_total",
    "devicestream_sink_fast_path_fallbacks_total",
    "devicestream_sink_write_latency_seconds",
    "devicestream_sink_db_available",
    # consuming
    "devicestream_consumer_lag_seconds",
    "devicestream_consumer_lag_messages",
    "devicestream_topic_messages",
    "devicestream_topic_bytes",
    "devicestream_stalled_partitions",
    "devicestream_stalls_total",
    "devicestream_ready",
    # database
    "devicestream_db_up",
    "devicestream_db_size_bytes",
    "devicestream_db_wal_directory_bytes",
    "devicestream_db_chunks_due_for_compression",
    "devicestream_db_wal_last_archived_timestamp_seconds",
    "devicestream_db_last_backup_timestamp_seconds",
    "devicestream_db_replica_lag_seconds",
    "devicestream_read_replica_lag_seconds",
    "devicestream_read_fallbacks_total",
    "devicestream_db_wal_last_archive_failure_timestamp_seconds",
    "devicestream_hypertable_bytes",
    "devicestream_hypertable_chunks",
    "devicestream_pgbouncer_up",
    # host and process
    "devicestream_host_disk_free_bytes",
    "devicestream_host_disk_size_bytes",
    "devicestream_host_cpu_seconds_total",
    "devicestream_host_memory_bytes",
    "devicestream_host_network_bytes_total",
    "devicestream_host_disk_io_bytes_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
}) | frozenset(f"{name}{suffix}" for name in _HISTOGRAMS for suffix in ("_bucket", "_sum", "_count"))

# The CONTRACT's tables and views, and the TimescaleDB views a dashboard may read.
KNOWN_RELATIONS = frozenset({
    "readings", "readings_1m", "readings_1h", "devices",
    "timescaledb_information.hypertables",
    "timescaledb_information.chunks",
    "timescaledb_information.dimensions",
    "timescaledb_information.compression_settings",
    "timescaledb_information.jobs",
    "timescaledb_information.job_stats",
})

# What Grafana's variables and macros stand for when a test runs the queries.
TEST_RANGE_SQL = "interval '1 hour'"
GRAFANA_PROMQL_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- alerts ------------------------------------------------------------------------------

def alert_rules(path: Path = ALERTS_FILE) -> list[dict[str, Any]]:
    """Every alerting rule (``alert``, ``expr``, ``for``, ``labels``, ``annotations``)."""
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]
            if "alert" in rule]


def alert_tests(path: Path = ALERTS_TEST_FILE) -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` case (``eval_time``, ``alertname``, ``exp_alerts``)."""
    return [case for test in load_yaml(path)["tests"] for case in test.get("alert_rule_test", [])]


# --- the dashboard -------------------------------------------------------------------------

def dashboard(path: Path = DASHBOARD_FILE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included (rows themselves excluded)."""
    board = dashboard() if board is None else board
    found = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _datasource_type(target: dict[str, Any], panel: dict[str, Any]) -> str:
    source = target.get("datasource") or panel.get("datasource") or {}
    return source.get("type", "") if isinstance(source, dict) else ""


def _targets(kind: str, board: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The targets of Prometheus (``kind="prometheus"``) or SQL (``kind="sql"``) queries."""
    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            source = _datasource_type(target, panel)
            if kind == "sql" and ("rawSql" in target or "postgres" in source):
                found.append(target)
            elif kind == "prometheus" and source == "prometheus":
                found.append(target)
    return found


def substitute_promql_variables(expr: str) -> str:
    """Grafana's interval variables replaced by fixed durations; any other ``$`` is refused."""
    for name in sorted(GRAFANA_PROMQL_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_PROMQL_VARIABLES[name])
    if "$" in expr:
        raise ValueError(f"unsupported Grafana variable in PromQL: {expr!r}")
    return expr


def dashboard_promql(board: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL expression of the dashboard, ready for Prometheus' query API."""
    return [substitute_promql_variables(target["expr"]) for target in _targets("prometheus", board)]


_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")


def _sql_macro(match: re.Match[str]) -> str:
    name, argument = match.group(1), (match.group(2) or "").strip()
    if name == "timeFilter" and argument:
        return f"{argument} > now() - {TEST_RANGE_SQL}"
    if name == "timeFrom" and not argument:
        return f"(now() - {TEST_RANGE_SQL})"
    if name == "timeTo" and not argument:
        return "now()"
    raise ValueError(f"unsupported Grafana macro: {match.group(0)!r}")


def substitute_sql_macros(sql: str) -> str:
    """Grafana's ``$__timeFilter(col)``, ``$__timeFrom()``, ``$__timeTo()`` as plain SQL for
    the last hour; any other macro or ``$variable`` is refused."""
    sql = _MACRO.sub(_sql_macro, sql)
    if re.search(r"\$[A-Za-z_{]", sql):
        raise ValueError(f"unsupported Grafana variable in SQL: {sql!r}")
    return sql


def dashboard_sql(board: dict[str, Any] | None = None) -> list[str]:
    """Every SQL query of the dashboard, as plain SQL PostgreSQL can run."""
    return [substitute_sql_macros(target["rawSql"]) for target in _targets("sql", board)]


# --- PromQL --------------------------------------------------------------------------------

_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
    # aggregation operators (also when written `sum by (x) (...)`)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"' r"|'(?:\\.|[^'\\])*'" r"|`[^`]*`")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*("(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\')')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)",
                       re.IGNORECASE)
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(promql: str) -> set[str]:
    """The metric names ``promql`` selects: not functions, keywords, aggregation operators,
    label names, label values, durations or numbers. ``{__name__="x"}`` counts as ``x``."""
    names = {m.group(1)[1:-1] for m in _NAME_MATCHER.finditer(promql)}
    text = _STRING.sub('""', promql)
    text = re.sub(r"\$\{?\w+\}?", " ", text)             # Grafana variables
    text = re.sub(r"\{[^{}]*\}", " ", text)              # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)            # ranges and subqueries
    text = _GROUPING.sub(" ", text)                      # by (...), on (...), ...
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


# --- SQL -----------------------------------------------------------------------------------

_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_SQL_STRING = re.compile(r"'(?:''|[^'])*'")
_RELATION = re.compile(r"\b(?:from|join)\s+((?:\"?[A-Za-z_][\w$]*\"?\.)?\"?[A-Za-z_][\w$]*\"?)",
                       re.IGNORECASE)


def sql_relations(sql: str) -> set[str]:
    """The tables, views and functions named after FROM or JOIN (lower case, quotes dropped;
    ``schema.name`` kept qualified). Subqueries in parentheses are looked into, not named."""
    text = _SQL_STRING.sub("''", _SQL_COMMENT.sub(" ", sql))
    return {m.group(1).replace('"', "").lower() for m in _RELATION.finditer(text)}


# --- Markdown anchors ----------------------------------------------------------------------

def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (``Alert: WorkerDown`` -> ``alert-workerdown``)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def markdown_anchors(markdown: str) -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$",
                                                           markdown, re.MULTILINE)}

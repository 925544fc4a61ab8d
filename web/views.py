"""Routes of the worker web server (registered on ``streams.application.app`` when imported).

The stats routes of CONTRACT.md: ``/pipeline/lag`` (``?scope=group`` for the whole
consumer group), ``/pipeline/throughput``, ``/pipeline/db``, ``/metrics`` and
``/dashboard`` (with ``/dashboard/dashboard.js`` and ``/dashboard/data``, the one small
answer it polls). Lag and database figures come from samples that two background tasks
refresh every few seconds (``LAG_INTERVAL_SECONDS``, ``DB_INTERVAL_SECONDS``, stretched
when a round is slow); a request only reads the latest sample. Every error is JSON
``{"error": "..."}`` with a 4xx or 5xx status.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

from aiokafka.structs import TopicPartition
from faust.web import Request, Response, View
from faust.web.exceptions import MethodNotAllowed

from streams.application import app, device_topics, pipeline_stats, settings
from streams.faust_internals import our_consumer
from streams.subscription import followed_topics  # the lag covers what the workers follow
from streams.topics import kafka_client_kwargs
from web.access import open_web_warning
from web.database import DatabaseSampler
from web.host_metrics import HostCollector
from web.kafka_offsets import BrokerOffsets
from web.lag import (
    Assignment,
    LagSample,
    LagSampler,
    lag_report,
    lag_summary,
    topics_report,
)
from web.periodic import PeriodicSample
from web.prometheus import (
    CONTENT_TYPE,
    PipelineCollector,
    ReadsCollector,
    exposition,
    metrics_registry,
)
from web.queries import reads
from web.throughput import throughput_report

log = logging.getLogger(__name__)

LAG_INTERVAL_SECONDS = 3.0
DB_INTERVAL_SECONDS = 5.0
# A request that finds no sample yet (worker just started) waits this long for one.
FIRST_SAMPLE_WAIT_SECONDS = 10.0
# A lag sample older than this, whose refresh keeps failing, is no longer served.
LAG_STALE_SECONDS = 30.0
LAG_SCOPES = ("worker", "group")


class _LatestAssignment:
    """Remembers the worker's latest partition assignment (Faust's signal hands it over)."""

    def __init__(self) -> None:
        self.latest: Assignment | None = None

    def __call__(self) -> Assignment | None:
        return self.latest

    def update(self, partitions: Iterable[TopicPartition]) -> None:
        self.latest = Assignment(frozenset(partitions), _consumer_subscription())


def _consumer_subscription() -> frozenset[str]:
    """The topics the Kafka consumer subscribed to.

    Faust keeps its aiokafka consumer private; the names of ``device_topics`` are the
    fallback, although they can run ahead of the consumer (Faust resubscribes later).
    """
    try:
        return our_consumer(app).subscribed_topics()
    except Exception:  # not started yet
        return frozenset(device_topics.topics)


assignment = _LatestAssignment()
lag_sampler = LagSampler(
    BrokerOffsets(**kafka_client_kwargs(settings)),
    group_id=app.conf.id,
    wanted=followed_topics(settings),
    assignment=assignment,
    subscribed=lambda: device_topics.topics,
)
database_sampler = DatabaseSampler(settings, pools=lambda: pipeline_stats.db_pools)
lag_sample: PeriodicSample[LagSample] = PeriodicSample(
    "consumer lag", lag_sampler.measure, LAG_INTERVAL_SECONDS)
database_sample: PeriodicSample[dict[str, Any]] = PeriodicSample(
    "database state", database_sampler.measure, DB_INTERVAL_SECONDS,
    reports_failure=lambda state: not state["available"])
registry = metrics_registry(PipelineCollector(pipeline_stats, lag_sample, database_sample))
registry.register(HostCollector(settings.watched_disks()))
registry.register(ReadsCollector(reads.state))


# mode types every handler as taking any positional arguments; this signal sends one.
@app.on_partitions_assigned.connect  # type: ignore[arg-type]
async def _measure_lag_of_new_assignment(sender: Any, assigned: Any, **kwargs: Any) -> None:
    assignment.update(assigned)
    lag_sample.refresh_soon()


@app.task
async def warn_of_an_open_web_server() -> None:
    """Say at start-up when the web views answer anyone beyond this host."""
    warning = open_web_warning(settings.web.bind, settings.web.read_token)
    if warning:
        log.warning(warning)


@app.task
async def measure_consumer_lag() -> None:
    """Keep the lag sample fresh (until the worker stops)."""
    try:
        await lag_sample.run()
    finally:
        await lag_sampler.close()


@app.task
async def measure_database_state() -> None:
    """Keep the database sample fresh (until the worker stops)."""
    try:
        await database_sample.run()
    finally:
        await database_sampler.close()


class JsonView(View):
    """A GET-only view; its failures become JSON (``web.errors``)."""

    async def post(self, request: Request, **kwargs: Any) -> Response:
        raise MethodNotAllowed(f"{request.method} not allowed here; use GET")

    put = patch = delete = post


@app.page("/pipeline/lag")
class PipelineLag(JsonView):
    """Committed offset, end offset and lag of this worker's (or the group's) partitions."""

    async def get(self, request: Request) -> Response:
        scope = request.query.get("scope", "worker")
        if scope not in LAG_SCOPES:
            return self.error(400, f"scope must be one of {', '.join(LAG_SCOPES)}, got {scope!r}")
        wanted = (lambda s: s.assignment_known) if scope == "worker" else (lambda s: True)
        sample = lag_sample.value
        if sample is None or not wanted(sample):
            sample = await lag_sample.wait_for(wanted, FIRST_SAMPLE_WAIT_SECONDS)
        if sample is None:
            why = lag_sample.error or (
                "the worker has no partition assignment yet" if scope == "worker"
                else "the first measurement is still running")
            return self.error(503, f"lag not measured yet: {why}", headers={"Retry-After": "5"})
        age = lag_sample.age or 0.0
        if lag_sample.error and age > LAG_STALE_SECONDS:
            return self.error(
                503, f"lag unavailable: {lag_sample.error} (last measured {age:.0f}s ago)",
                headers={"Retry-After": "5"})
        if scope == "worker":
            return self.json(lag_report(sample.own()))
        return self.json({**lag_report(sample.group()), "topics": topics_report(sample.topics)})


@app.page("/pipeline/throughput")
class PipelineThroughput(JsonView):
    """Totals since start and rates over the last 10 s of this worker's pipeline."""

    async def get(self, request: Request) -> Response:
        return self.json(throughput_report(pipeline_stats))


@app.page("/pipeline/db")
class PipelineDatabase(JsonView):
    """pgBouncer pools, the worker's pools, PostgreSQL and TimescaleDB state."""

    async def get(self, request: Request) -> Response:
        state = database_sample.value
        if state is None:
            state = await database_sample.wait_for(lambda s: True, FIRST_SAMPLE_WAIT_SECONDS)
        if state is None:
            return self.error(503, "database state not measured yet",
                              headers={"Retry-After": "5"})
        return self.json({**state, "sample_age_seconds": database_sample.age,
                          "reads": reads.state()})


@app.page("/metrics")
class Metrics(JsonView):
    """Prometheus text exposition of the pipeline, lag and database figures."""

    async def get(self, request: Request) -> Response:
        return self.bytes(exposition(registry), headers={"Content-Type": CONTENT_TYPE})


@lru_cache(maxsize=None)
def _static(name: str) -> bytes:
    return resources.files("web").joinpath("static", name).read_bytes()


@app.page("/dashboard")
class Dashboard(JsonView):
    """A page of live charts: throughput, lag, dead letters, write latency, database size."""

    async def get(self, request: Request) -> Response:
        return self.bytes(_static("dashboard.html"),
                          headers={"Content-Type": "text/html; charset=utf-8"})


@app.page("/dashboard/data")
class DashboardData(JsonView):
    """What the dashboard draws, in one small answer: throughput, lag totals, database."""

    async def get(self, request: Request) -> Response:
        database = database_sample.value
        return self.json({
            "throughput": throughput_report(pipeline_stats),
            "lag": lag_summary(lag_sample.value),
            "db": None if database is None else {**database,
                                                 "sample_age_seconds": database_sample.age,
                                                 "reads": reads.state()},
        })


@app.page("/dashboard/dashboard.js")
class DashboardScript(JsonView):
    async def get(self, request: Request) -> Response:
        return self.bytes(_static("dashboard.js"),
                          headers={"Content-Type": "text/javascript; charset=utf-8"})

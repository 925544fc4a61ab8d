"""Health routes for supervisors, and the stall watchdog (registered on
``streams.application.app`` when imported).

``GET /health/live`` answers 200 whenever the event loop serves requests: a supervisor
that gets no answer restarts the worker. ``GET /health/ready`` answers 200 only when every
check of :func:`readiness` holds, else 503 naming the failing ones; it reads in-memory
state only, so it is cheap to poll.

Every lag sample is also given to the stall watchdog (``web.stall``): partitions with lag
whose committed offset has not moved for ``STALL_SECONDS`` while the database is up are
logged, counted and make the worker unready; with ``STALL_EXIT`` the worker then exits
with ``EXIT_STALLED`` (after ``STALL_EXIT_DELAY_SECONDS``, so that the readiness route
and ``/metrics`` show the stall first). Offsets are committed only for written messages,
so the next owner of the partitions loses and duplicates nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

from faust.web import Request, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.application import app, pipeline_stats, settings
from streams.faust_internals import our_consumer
from streams.worker import EXIT_STALLED, exit_without_committing
from web.stall import StallWatchdog
from web.views import JsonView, assignment, database_sample, lag_sample, registry

log = logging.getLogger(__name__)

# A fetch loop silent for longer than this is not fetching (it comes back about once a
# second when idle, and within KAFKA_FETCH_MAX_WAIT when there is data).
FETCH_SILENCE_SECONDS = 30.0
STALL_EXIT_DELAY_SECONDS = 30.0  # two scrapes at Prometheus' usual 15 s
WATCH_INTERVAL_SECONDS = 1.0

watchdog = StallWatchdog(settings.worker.stall_seconds)


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


def database_check(write_ok: bool, state: dict[str, Any] | None) -> Check:
    """The database check from the last write and the latest database sample."""
    if not write_ok:
        return Check(False, "the last database write failed; retrying")
    if state is None:
        return Check(False, "database state not measured yet")
    if not state.get("available", True):
        return Check(False, f"database unreachable: {state.get('error') or 'unknown error'}")
    return Check(True, "reachable")


def database_reachable(state: dict[str, Any] | None) -> bool:
    """Whether the latest database sample reached PostgreSQL. The stall watchdog judges by
    this, not by the last write: a write that hangs on a reachable database until its
    timeout (a lock) is the stall the watchdog is for, not an outage, and with the last
    write's failure counted as one, its clocks would start again at every timeout."""
    return state is not None and bool(state.get("available", True))


def readiness_checks(*, partitions: int | None, fetch_silence: float | None,
                     database: Check, stalled: list[Any], stall_seconds: float
                     ) -> dict[str, Check]:
    """Each readiness check by name: joined, fetching, database, not_stalled."""
    return {
        "joined": Check(partitions is not None,
                        "no partition assignment yet" if partitions is None
                        else f"{partitions} partitions assigned"),
        "fetching": Check(fetch_silence is not None and fetch_silence < FETCH_SILENCE_SECONDS,
                          "no fetch yet" if fetch_silence is None
                          else f"last fetch {fetch_silence:.1f}s ago"),
        "database": database,
        "not_stalled": Check(not stalled,
                             "no stalled partition" if not stalled else
                             f"{len(stalled)} partitions with lag and no commit for "
                             f"{stall_seconds:.0f}s: {_names(stalled)}"),
    }


def _worker_database_check() -> Check:
    return database_check(pipeline_stats.db_available, database_sample.value)


def readiness() -> dict[str, Check]:
    """This worker's readiness checks, from its in-memory state."""
    latest = assignment.latest
    fetched = our_consumer(app).last_fetch_at
    return readiness_checks(
        partitions=None if latest is None else len(latest.partitions),
        fetch_silence=None if fetched is None else time.monotonic() - fetched,
        database=_worker_database_check(), stalled=watchdog.stalled,
        stall_seconds=watchdog.stall_seconds)


def _names(partitions: list[Any], most: int = 10) -> str:
    shown = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions[:most])
    return shown + (f" and {len(partitions) - most} more" if len(partitions) > most else "")


@app.page("/health/live")
class Live(JsonView):
    """200 while the process and its event loop work."""

    async def get(self, request: Request) -> Response:
        return self.json({"live": True})


@app.page("/health/ready")
class Ready(JsonView):
    """200 when the worker consumes, the database is reachable and nothing is stalled."""

    async def get(self, request: Request) -> Response:
        checks = readiness()
        failing = [name for name, check in checks.items() if not check.ok]
        body = {"ready": not failing, "failing": failing,
                "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}}
        return self.json(body, status=503 if failing else 200)


class HealthCollector(Collector):
    """``devicestream_ready``, ``devicestream_stalled_partitions``, ``devicestream_stalls_total``."""

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("devicestream_ready", "1 when /health/ready answers 200")
        ready.add_metric([], int(all(check.ok for check in readiness().values())))
        stalled = GaugeMetricFamily("devicestream_stalled_partitions",
                                    "Partitions with lag and no commit for STALL_SECONDS")
        stalled.add_metric([], len(watchdog.stalled))
        stalls = CounterMetricFamily("devicestream_stalls",
                                     "Partitions that became stalled since the worker started")
        stalls.add_metric([], watchdog.stalls_total)
        yield from (ready, stalled, stalls)


registry.register(HealthCollector())


@app.timer(WATCH_INTERVAL_SECONDS)
async def watch_for_stalls() -> None:
    """Judge each new lag sample; log a stall, and end the worker on it (``STALL_EXIT``)."""
    sample = lag_sample.value
    if sample is None:
        return
    counted = watchdog.stalls_total
    stalled = watchdog.observe(sample, database_reachable(database_sample.value))
    if watchdog.stalls_total > counted:
        log.error("ingest stalled: %d partitions have had lag and no commit for %.0fs "
                  "while the database was up: %s", len(stalled), watchdog.stall_seconds,
                  _names(stalled, most=50))
    if (stalled and settings.worker.stall_exit and watchdog.stalled_since is not None
            and sample.taken_at - watchdog.stalled_since >= STALL_EXIT_DELAY_SECONDS):
        exit_without_committing(
            EXIT_STALLED, f"ingest stalled on {len(stalled)} partitions (STALL_EXIT=true)")

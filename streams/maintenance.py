"""Storage maintenance from the Faust app: the ``maintenance`` command and the leader's timer.

``faust -A streams.app maintenance`` runs retention, index compaction, ANALYZE of the
hypertables and the compression check now (waiting for a run in progress elsewhere to
finish), and prints what it did. The worker that leads the consumer group checks every
minute whether the newest recorded run is older than ``MAINTENANCE_INTERVAL`` seconds and
runs maintenance when it is (``MAINTENANCE_INTERVAL=0`` turns the timer off). The logic is
in ``sinks/maintenance.py``.
"""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import click
from faust.cli import AppCommand, option

from sinks.maintenance import LeaseTaken, maintain
from streams.application import app, settings

log = logging.getLogger(__name__)

# How often the leader looks whether a run is due.
CHECK_SECONDS = 60.0


def _holder(kind: str) -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


@app.command(
    option("--wait", type=click.FloatRange(0), default=120.0, show_default=True,
           help="Seconds to wait for a maintenance run in progress elsewhere."),
    option("--changed-only", is_flag=True, default=False,
           help="ANALYZE only the chunks changed since their last ANALYZE "
                "(default: the whole hypertables)."),
)
async def maintenance(self: AppCommand, wait: float, changed_only: bool) -> None:
    """Run retention, index compaction, ANALYZE and the compression check now, and
    report what was done."""
    try:
        report = await maintain(settings, _holder("command"), full_analyze=not changed_only,
                                wait=wait)
    except LeaseTaken as exc:
        raise click.ClickException(str(exc)) from None
    assert report is not None
    for line in report.lines():
        self.say(line)


if settings.storage.maintenance_interval > 0:

    @app.timer(min(float(settings.storage.maintenance_interval), CHECK_SECONDS), on_leader=True,
               name="storage_maintenance")
    async def storage_maintenance() -> None:
        """On the leader: run maintenance when the last run is older than the interval."""
        try:
            report = await maintain(
                settings, _holder("leader"),
                due_after=timedelta(seconds=settings.storage.maintenance_interval),
                full_analyze=False)
        except LeaseTaken as exc:
            log.info("storage maintenance skipped: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - logged, retried at the next check
            log.error("storage maintenance failed (%s: %s); retrying in %.0fs",
                      type(exc).__name__, exc, CHECK_SECONDS)
            return
        if report is not None:
            for line in report.lines():
                log.info("storage maintenance: %s", line)

"""Stopping a worker on the real stack: drained and committed, or nothing committed at all."""
from __future__ import annotations

import signal
import time

import pytest

from tests.stack import count_rows, fleet, free_port, publish_readings, rows_at_least, wait_for

pytestmark = pytest.mark.integration


async def test_sigterm_drains_in_flight_batches_and_exits_zero_within_30_seconds(
    start_worker,
) -> None:
    devices, only = fleet("term-", 4)
    points = await publish_readings(devices, per_device=2000)
    worker = start_worker("sigterm", DEVICE_FILTER=only, SINK_BATCH_POINTS="2000",
                          SINK_LINGER="1")
    await wait_for(lambda: rows_at_least(devices, 1), 90, "the first rows")
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    status = worker.process.wait(40)
    took = time.monotonic() - started
    assert status == 0 and took < 30, f"exit {status} after {took:.1f}s"
    assert "Traceback" not in worker.log_text()
    start_worker("after-sigterm", DEVICE_FILTER=only, APP_ID=worker.env["APP_ID"])
    await wait_for(lambda: rows_at_least(devices, points), 90, f"{points} rows")
    assert await count_rows(devices) == points


@pytest.mark.slow
async def test_a_worker_that_cannot_write_exits_after_the_deadline_without_committing(
    start_worker,
) -> None:
    devices, only = fleet("nodb-", 2)
    points = await publish_readings(devices, per_device=500)
    worker = start_worker("no-database", DEVICE_FILTER=only, DB_PORT=str(free_port()),
                          SHUTDOWN_TIMEOUT="5")
    # The writer first reads the devices' clocks, then writes: either fails and is retried.
    await wait_for(lambda: _log_has(worker, "read device clocks failed", "write rows failed"),
                   60, "a failed database call")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(30) == 75
    # Nothing was committed: a worker that can write gets every reading.
    start_worker("database-back", DEVICE_FILTER=only, APP_ID=worker.env["APP_ID"])
    await wait_for(lambda: rows_at_least(devices, points), 90, f"{points} rows")
    assert await count_rows(devices) == points


async def _log_has(worker, *texts: str) -> bool:
    log = worker.log_text()
    return any(text in log for text in texts)

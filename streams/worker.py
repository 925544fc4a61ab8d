"""The worker process: Faust's worker with a bounded, lossless shutdown.

On SIGTERM (or SIGINT) Faust stops consuming, waits until every message taken from Kafka
is written and acked, commits, and exits 0. When that cannot finish in
``SHUTDOWN_TIMEOUT`` seconds (the database is down, say), the process exits with status 75
without committing anything more: what was not written is replayed by the next owner of
its partitions, so stopping never loses or duplicates a reading.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Awaitable, Callable

import faust

log = logging.getLogger(__name__)

EXIT_SHUTDOWN_TIMED_OUT = 75  # EX_TEMPFAIL: nothing lost, try again


class Worker(faust.Worker):
    """Faust's worker whose shutdown cannot hang."""

    shutdown_timeout: float = 25.0
    prepare: Callable[[], Awaitable[None]] | None = None

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.prepare is not None:
            await self.prepare()

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if not self._signal_stop_time:
            timeout = self.shutdown_timeout
            timer = threading.Timer(timeout, self._give_up, args=(timeout,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signum)

    @staticmethod
    def _give_up(timeout: float) -> None:
        log.error("shutdown did not finish within %.0fs; exiting without committing the "
                  "messages not yet written (they will be consumed again)", timeout)
        logging.shutdown()
        os._exit(EXIT_SHUTDOWN_TIMED_OUT)


def worker_class(
    shutdown_timeout: float, prepare: Callable[[], Awaitable[None]] | None = None
) -> type[Worker]:
    """The worker class for ``faust.App(Worker=...)``: this shutdown deadline, and
    ``prepare`` awaited before the app starts."""
    return type("Worker", (Worker,), {"shutdown_timeout": shutdown_timeout,
                                      "prepare": staticmethod(prepare) if prepare else None})

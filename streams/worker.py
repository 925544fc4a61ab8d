"""The worker process: Faust's worker with a bounded, lossless shutdown.

On SIGTERM (or SIGINT) Faust stops consuming, waits until every message taken from Kafka
is written and acked, commits, and exits 0. When that cannot finish in
``SHUTDOWN_TIMEOUT`` seconds (the database is down, say), the process exits with status 75
without committing anything more: what was not written is replayed by the next owner of
its partitions, so stopping never loses or duplicates a reading. An error the ingest
pipeline cannot handle ends the process the same way, with status 70: Faust would restart
the agent in place, leaving the messages it had taken unwritten until a restart. The stall
watchdog (``web.health``) ends it with status 69 when partitions stop moving.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Awaitable, Callable, NoReturn

import faust

log = logging.getLogger(__name__)

EXIT_SHUTDOWN_TIMED_OUT = 75  # EX_TEMPFAIL: nothing lost, try again
EXIT_INGEST_FAILED = 70  # EX_SOFTWARE: an error the pipeline cannot handle; nothing lost
EXIT_STALLED = 69  # EX_UNAVAILABLE: the stall watchdog found no progress; nothing lost


def exit_without_committing(code: int, why: str, exc: BaseException | None = None) -> NoReturn:
    """Log ``why`` and end the process now. Offsets are committed only for written
    messages, so the next owner of the partitions consumes the rest again: like a SIGKILL,
    this loses and duplicates nothing."""
    log.critical("%s; exiting with status %d without committing the messages not yet "
                 "written (they will be consumed again)", why, code, exc_info=exc)
    logging.shutdown()
    os._exit(code)


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
        exit_without_committing(EXIT_SHUTDOWN_TIMED_OUT,
                                f"shutdown did not finish within {timeout:.0f}s")


def worker_class(
    shutdown_timeout: float, prepare: Callable[[], Awaitable[None]] | None = None
) -> type[Worker]:
    """The worker class for ``faust.App(Worker=...)``: this shutdown deadline, and
    ``prepare`` awaited before the app starts."""
    return type("Worker", (Worker,), {"shutdown_timeout": shutdown_timeout,
                                      "prepare": staticmethod(prepare) if prepare else None})

"""A measurement repeated in the background, so that a web request only reads the latest one.

The views never query the broker or the database themselves: they read the value the
last round measured. A round that fails keeps the previous value and records the error,
so a view can tell "measured a while ago" from "never measured".
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def describe_error(exc: BaseException) -> str:
    """A one-line description of an exception, for JSON answers and logs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class PeriodicSample(Generic[T]):
    """Runs ``measure`` now and then every ``interval`` seconds (or sooner when asked)."""

    def __init__(self, name: str, measure: Callable[[], Awaitable[T]], interval: float,
                 *, max_busy_fraction: float = 0.05,
                 reports_failure: Callable[[T], bool] | None = None) -> None:
        self.name = name
        self.interval = interval
        # A round that takes long (a broker with very many partitions) stretches the
        # interval, so that measuring never takes more than this share of the time. A
        # round that failed, raising or with a value ``reports_failure`` accepts (the
        # database unreachable), spent its time waiting: it does not stretch anything,
        # so the next round soon sees the recovery.
        self.max_busy_fraction = max_busy_fraction
        self._reports_failure = reports_failure
        self.last_duration = 0.0
        self._measure = measure
        self.value: T | None = None
        self.measured_at: float | None = None  # wall clock of the last successful round
        self.error: str | None = None  # why the last round failed, None when it succeeded
        self.rounds = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()

    @property
    def age(self) -> float | None:
        """Seconds since the last successful round, None before the first."""
        return None if self.measured_at is None else max(time.time() - self.measured_at, 0.0)

    def refresh_soon(self) -> None:
        """Start the next round now instead of at the end of the interval."""
        self._wake.set()

    async def run(self) -> None:
        """Measure forever (until cancelled)."""
        while True:
            self._wake.clear()
            await self.measure_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self.next_interval)
            except asyncio.TimeoutError:
                pass

    @property
    def next_interval(self) -> float:
        return max(self.interval, self.last_duration / self.max_busy_fraction)

    async def measure_once(self) -> None:
        started = time.monotonic()
        try:
            value = await self._measure()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = describe_error(exc)
            if error != self.error:  # log each new failure once, not every round
                log.warning("measuring %s failed: %s", self.name, error)
            self.error = error
            self.last_duration = 0.0
        else:
            if self.error is not None:
                log.info("measuring %s works again", self.name)
            self.value, self.measured_at, self.error = value, time.time(), None
            failed = self._reports_failure is not None and self._reports_failure(value)
            self.last_duration = 0.0 if failed else time.monotonic() - started
        self.rounds += 1
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, accept: Callable[[T], bool], timeout: float) -> T | None:
        """The latest value once ``accept`` takes it, or None after ``timeout`` seconds."""
        async def accepted() -> T:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self.value is not None and accept(self.value)
                )
                assert self.value is not None
                return self.value

        try:
            return await asyncio.wait_for(accepted(), timeout)
        except asyncio.TimeoutError:
            return None

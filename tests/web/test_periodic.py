"""The background sample the stats views read from."""
from __future__ import annotations

import asyncio

from web.periodic import PeriodicSample, describe_error


async def test_a_failed_round_keeps_the_previous_value_and_records_the_error() -> None:
    answers: list[object] = [1, RuntimeError("broker gone\nsecond line"), 3]

    async def measure() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    sample: PeriodicSample[int] = PeriodicSample("test", measure, interval=60)
    assert sample.value is None and sample.age is None
    await sample.measure_once()
    assert (sample.value, sample.error) == (1, None)
    first_measured = sample.measured_at
    await sample.measure_once()
    assert (sample.value, sample.error) == (1, "RuntimeError: broker gone")
    assert sample.measured_at == first_measured
    await sample.measure_once()
    assert (sample.value, sample.error, sample.rounds) == (3, None, 3)


async def test_readers_can_wait_for_an_acceptable_value_and_ask_for_a_refresh() -> None:
    count = 0

    async def measure() -> int:
        nonlocal count
        count += 1
        return count

    sample: PeriodicSample[int] = PeriodicSample("test", measure, interval=60)
    runner = asyncio.create_task(sample.run())
    try:
        assert await sample.wait_for(lambda v: v >= 1, timeout=2) == 1
        # the interval is a minute: only refresh_soon brings the second round in time
        assert await sample.wait_for(lambda v: v >= 2, timeout=0.2) is None
        sample.refresh_soon()
        assert await sample.wait_for(lambda v: v >= 2, timeout=2) == 2
    finally:
        runner.cancel()


def test_errors_are_described_on_one_line() -> None:
    assert describe_error(OSError("connection refused")) == "OSError: connection refused"
    assert describe_error(TimeoutError()) == "TimeoutError"


async def test_a_slow_measurement_stretches_the_interval() -> None:
    async def measure() -> int:
        return 1

    sample: PeriodicSample[int] = PeriodicSample("test", measure, interval=3,
                                                 max_busy_fraction=0.05)
    await sample.measure_once()
    assert sample.next_interval == 3
    sample.last_duration = 0.5  # e.g. thousands of partitions
    assert sample.next_interval == 10


async def test_a_slow_failed_round_does_not_stretch_the_interval() -> None:
    # A database outage: the round waits for its timeout, then reports the database
    # unreachable (a value, not an exception), or raises. Either way the next round must
    # come at the interval, or readiness would stay failed for minutes after the recovery.
    answers: list[object] = [{"available": False}, RuntimeError("down"), {"available": True}]

    async def measure() -> dict[str, bool]:
        await asyncio.sleep(0.2)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    sample: PeriodicSample[dict[str, bool]] = PeriodicSample(
        "test", measure, interval=1, max_busy_fraction=0.05,
        reports_failure=lambda state: not state["available"])
    await sample.measure_once()
    assert sample.value == {"available": False} and sample.next_interval == 1
    await sample.measure_once()
    assert sample.error and sample.next_interval == 1
    await sample.measure_once()  # a real measurement: its time counts
    assert sample.next_interval >= 0.2 / 0.05

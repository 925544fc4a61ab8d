"""The first value of a key stays when batches of one partition race: each partition's rows
become durable in offset order, whatever the number of writers (issue: two writers racing
stored a later duplicate's value)."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import AsyncIterator, Sequence

import pytest

from agents.ingest import IngestConfig, IngestPipeline
from sinks.postgres import create_pool
from sinks.timescale import CacheState, Point, TimescaleSink, WriteResult
from tests.agents.test_ingest import DeadLetters, FakeSink, FakeStream, event, reading
from tests.stack import SETTINGS, db_connect, require_stack, unique

HOLD_SECONDS = 2.0


class FirstWriteHeldBack:
    """A sink whose first write waits until a later write has finished, or ``HOLD_SECONDS``
    at most: a slow first write, as a database outage with two retrying writers makes it."""

    def __init__(self, sink: FakeSink | TimescaleSink) -> None:
        self._sink = sink
        self._writes = 0
        self._later_written = asyncio.Event()

    async def write(self, points: Sequence[Point]) -> WriteResult:
        self._writes += 1
        if self._writes == 1:
            try:
                await asyncio.wait_for(self._later_written.wait(), HOLD_SECONDS)
            except TimeoutError:
                pass
            return await self._sink.write(points)
        result = await self._sink.write(points)
        self._later_written.set()
        return result

    def cache_state(self) -> CacheState:
        return self._sink.cache_state()


@pytest.fixture(params=["memory", pytest.param("timescaledb", marks=pytest.mark.integration)])
async def sink(request: pytest.FixtureRequest) -> AsyncIterator[FakeSink | TimescaleSink]:
    """The in-memory sink (first write of a key wins, as in the database), or the real one."""
    if request.param == "memory":
        yield FakeSink()
        return
    require_stack()
    pool = await create_pool(SETTINGS)
    try:
        yield TimescaleSink(pool)
    finally:
        await pool.close()


async def stored_values(sink: FakeSink | TimescaleSink, device: str) -> list[float]:
    if isinstance(sink, FakeSink):
        return [value for (_, d, _), value in sink.rows.items() if d == device]
    conn = await db_connect()
    try:
        rows = await conn.fetch("SELECT value FROM readings WHERE device_id = $1", device)
        aggregate = await conn.fetchrow(
            "SELECT count, sum FROM readings_1m WHERE device_id = $1", device)
    finally:
        await conn.close()
    values = [row["value"] for row in rows]
    assert (aggregate["count"], aggregate["sum"]) == (len(values), sum(values)), \
        "the aggregate counts the stored value only"
    return values


async def test_a_held_back_first_batch_keeps_its_value_over_a_later_duplicate(sink) -> None:
    device = unique("order-")
    # One point a batch: offset 0 and offset 1 of the same partition are separate batches,
    # and offset 1 repeats offset 0's key with another value.
    first, later = (event(reading(device=device, seconds=5, t=value), offset, device=device)
                    for offset, value in ((0, 1.0), (1, 2.0)))
    stream = FakeStream([first, later])
    letters = DeadLetters()
    config = IngestConfig(batch_points=1, linger=0.01, retention=timedelta(days=90),
                          max_backoff=0.05, writers=2)
    pipeline = IngestPipeline(FirstWriteHeldBack(sink), letters, letters.publish, config)
    task = asyncio.create_task(pipeline.run(stream))
    try:
        for _ in range(int((HOLD_SECONDS + 5) / 0.01)):
            if len(stream.acked) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sorted(stream.acked) == [0, 1]
    assert await stored_values(sink, device) == [1.0], "the first value stays"

"""Unit tests of the ingest pipeline with an in-memory sink and stream (no network)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Sequence

import asyncpg
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

import agents.ingest
from agents.ingest import IngestConfig, IngestPipeline, run_or_exit
from schema.dead_letters import DeadLetter
from sinks.timescale import CacheState, Point, WriteResult
from streams.topics import SHARED_TOPIC
from tables.event_clock import EventClock
from tests.records import late_by_own_device, record, tp_of

NOW = datetime.now(timezone.utc)


def reading(device: str = "d1", seconds: int = 0, **metrics: Any) -> dict[str, Any]:
    moment = NOW - timedelta(seconds=60 - seconds)
    return {"device_id": device, "time": moment.isoformat(), "metrics": metrics or {"t": 1.0}}


def event(value: Any, offset: int, device: str = "d1") -> ConsumerRecord:
    return record(f"device-data-{device}", device.encode(), value, offset)


class FakeStream:
    """Hands the prepared records over ``per_fetch`` at a time, then waits forever; records
    acked offsets."""

    def __init__(self, records: list[ConsumerRecord], per_fetch: int = 1) -> None:
        self._records = records
        self._per_fetch = per_fetch
        self.acked: list[int] = []

    async def chunks(self):
        for start in range(0, len(self._records), self._per_fetch):
            chunk: list[tuple[TP, list[ConsumerRecord]]] = []
            for r in self._records[start:start + self._per_fetch]:
                if chunk and chunk[-1][0] == tp_of(r):
                    chunk[-1][1].append(r)
                else:
                    chunk.append((tp_of(r), [r]))
            yield chunk
        await asyncio.Event().wait()

    def ack(self, offsets: dict[TP, list[int]]) -> None:
        for tp_offsets in offsets.values():
            self.acked.extend(tp_offsets)


class FakeSink:
    """Stores points in a dict; can be told to fail or to block."""

    def __init__(self, fail_times: int = 0, refuse_metric: str | None = None,
                 failure: Exception | None = None) -> None:
        self.rows: dict[tuple[int, str, str], float] = {}
        self.fail_times = fail_times
        self.failure = failure or ConnectionResetError("server closed the connection")
        self.refuse_metric = refuse_metric
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls = 0
        self.clock_reads: list[list[str]] = []  # the devices of each last_seen call

    async def write(self, points: Sequence[Point]) -> WriteResult:
        self.calls += 1
        await self.gate.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise self.failure
        if self.refuse_metric and any(p[2] == self.refuse_metric for p in points):
            raise asyncpg.DataError(f"value out of range for {self.refuse_metric}")
        new = 0
        for time_us, device, metric, value in points:
            if (time_us, device, metric) not in self.rows:
                self.rows[(time_us, device, metric)] = value
                new += 1
        return WriteResult(points=len(points), inserted=new)

    def cache_state(self) -> CacheState:
        return CacheState(series=len({(d, m) for _, d, m in self.rows}), bytes=0, resets=0)

    async def last_seen(self, device_ids: Sequence[str]) -> dict[str, int]:
        """Each device's newest stored time, as the devices table keeps it."""
        self.clock_reads.append(sorted(device_ids))
        newest: dict[str, int] = {}
        for time_us, device, _ in self.rows:
            if device in device_ids and time_us > newest.get(device, 0):
                newest[device] = time_us
        return newest


class DeadLetters:
    """An in-memory outbox and broker: publishes each staged dead letter once."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.published: set[tuple[str, int, int, int | None]] = set()

    async def stage(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        return [d for d in letters if d.location not in self.published]

    async def mark_published(self, letters: list[DeadLetter],
                             positions: list[tuple[int, int]]) -> None:
        assert len(positions) == len(letters)
        self.published.update(d.location for d in letters)

    async def publish(self, letter: DeadLetter):
        self.records.append(orjson.loads(letter.value))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(partition=0, offset=len(self.records) - 1))
        return done


def pipeline(sink: FakeSink, letters: DeadLetters, config: IngestConfig | None = None) -> IngestPipeline:
    return IngestPipeline(sink, letters, letters.publish, config or CONFIG)


CONFIG = IngestConfig(batch_points=1000, linger=0.05, retention=timedelta(days=90), max_backoff=0.05)


async def run_until(pipeline: IngestPipeline, stream: FakeStream, done, timeout: float = 5.0,
                    follows=None) -> None:
    task = asyncio.create_task(pipeline.run(stream, follows))
    try:
        for _ in range(int(timeout / 0.01)):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_messages_are_acked_only_after_their_rows_are_written() -> None:
    sink, letters = FakeSink(), DeadLetters()
    sink.gate.clear()
    stream = FakeStream([event(reading(seconds=i), i) for i in range(5)])
    task = asyncio.create_task(pipeline(sink, letters).run(stream))
    await asyncio.sleep(0.3)
    assert sink.calls >= 1 and stream.acked == [] and sink.rows == {}
    sink.gate.set()
    for _ in range(100):
        if len(stream.acked) == 5:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert stream.acked == [0, 1, 2, 3, 4]
    assert len(sink.rows) == 5


async def test_transient_database_errors_are_retried_until_the_rows_are_written() -> None:
    sink, letters = FakeSink(fail_times=3), DeadLetters()
    stream = FakeStream([event(reading(t=1.5, h=2), 0)])
    await run_until(pipeline(sink, letters), stream, lambda: stream.acked)
    assert sorted(v for v in sink.rows.values()) == [1.5, 2.0]
    assert sink.calls == 4 and letters.records == []


async def test_a_connection_left_mid_operation_by_an_outage_is_retried_not_fatal() -> None:
    # What asyncpg's pool raised when PostgreSQL stopped during a COPY (test_faults).
    broken = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress")
    sink, letters = FakeSink(fail_times=2, failure=broken), DeadLetters()
    stream = FakeStream([event(reading(t=1.5), 0)])
    await run_until(pipeline(sink, letters), stream, lambda: stream.acked)
    assert list(sink.rows.values()) == [1.5] and sink.calls == 3


async def test_invalid_readings_are_dead_lettered_with_their_source_and_valid_ones_stored() -> None:
    sink, letters = FakeSink(), DeadLetters()
    stream = FakeStream([
        event(b"{not json", 0),
        event([reading(t=1), reading(t="hot"), reading(device="d2")], 1),
    ])
    await run_until(pipeline(sink, letters), stream,
                    lambda: len(stream.acked) == 2)
    assert len(sink.rows) == 1
    located = sorted((r["offset"], r.get("index")) for r in letters.records)
    assert located == [(0, None), (1, 1), (1, 2)]
    assert all(r["topic"] == "device-data-d1" and r["partition"] == 0 for r in letters.records)
    assert letters.records[0]["raw"] == "{not json"


async def test_readings_the_database_refuses_are_dead_lettered_and_the_rest_stored() -> None:
    sink, letters = FakeSink(refuse_metric="poison"), DeadLetters()
    stream = FakeStream([
        event(reading(seconds=1, t=1), 0),
        event([reading(seconds=2, t=2), reading(seconds=3, poison=3), reading(seconds=4, t=4)], 1),
        event(reading(seconds=5, t=5), 2),
    ])
    await run_until(pipeline(sink, letters), stream,
                    lambda: len(stream.acked) == 3)
    assert sorted(sink.rows.values()) == [1.0, 2.0, 4.0, 5.0]
    assert len(letters.records) == 1
    record = letters.records[0]
    assert (record["offset"], record["index"]) == (1, 1)
    assert "value out of range" in record["error"]


async def test_a_full_batch_is_written_without_waiting_for_the_linger_time() -> None:
    sink, letters = FakeSink(), DeadLetters()
    config = IngestConfig(batch_points=4, linger=3600, retention=timedelta(days=90),
                          max_backoff=0.05)
    stream = FakeStream([event(reading(seconds=i, a=1, b=2), i) for i in range(4)])
    await run_until(pipeline(sink, letters, config), stream,
                    lambda: len(stream.acked) == 4)
    assert len(sink.rows) == 8


async def test_a_fetch_bigger_than_a_batch_is_split_into_batches_of_the_configured_size() -> None:
    sink, letters = FakeSink(), DeadLetters()
    sizes: list[int] = []
    write = sink.write

    async def recording(points: Sequence[Point]) -> WriteResult:
        sizes.append(len(points))
        return await write(points)

    sink.write = recording
    config = IngestConfig(batch_points=4, linger=0.05, retention=timedelta(days=90),
                          max_backoff=0.05)
    stream = FakeStream([event(reading(seconds=i), i) for i in range(10)], per_fetch=10)
    await run_until(pipeline(sink, letters, config), stream, lambda: len(stream.acked) == 10)
    assert sizes == [4, 4, 2] and stream.acked == list(range(10)) and len(sink.rows) == 10


async def test_in_shared_mode_messages_of_devices_not_followed_are_acked_untouched() -> None:
    sink, letters = FakeSink(), DeadLetters()
    mine, other = (record(SHARED_TOPIC, d.encode(), reading(device=d), offset=i)
                   for i, d in enumerate(["mine-1", "other-1"]))
    stream = FakeStream([mine, other, record(SHARED_TOPIC, b"other-2", b"{bad", offset=2)],
                        per_fetch=3)
    await run_until(pipeline(sink, letters), stream, lambda: len(stream.acked) == 3,
                    follows=lambda device_id: device_id.startswith("mine-"))
    assert [device for _, device, _ in sink.rows] == ["mine-1"]
    assert letters.records == [] and stream.acked == [0, 1, 2]


class GatedSink(FakeSink):
    """A sink whose writes each wait for their own release; records how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.releases: list[asyncio.Event] = []
        self.running = self.most_at_once = 0

    async def write(self, points: Sequence[Point]) -> WriteResult:
        release = asyncio.Event()
        self.releases.append(release)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await release.wait()
        self.running -= 1
        return await super().write(points)


async def _until(condition, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_lanes_store_batches_at_once_and_ack_each_only_after_its_own_rows() -> None:
    sink, letters = GatedSink(), DeadLetters()
    config = IngestConfig(batch_points=2, linger=3600, retention=timedelta(days=90),
                          max_backoff=0.05, writers=2)
    # d1's partition and d2's go to different lanes; d1's second batch queues behind its first.
    stream = FakeStream([event(reading(seconds=i, device=d), offset, device=d)
                         for i, (d, offset) in enumerate([("d1", 0), ("d1", 1), ("d2", 10),
                                                          ("d2", 11), ("d1", 2), ("d1", 3)])])
    task = asyncio.create_task(pipeline(sink, letters, config).run(stream))
    try:
        await _until(lambda: len(sink.releases) == 2, "two writes")
        await asyncio.sleep(0.05)
        assert sink.most_at_once == 2 and len(sink.releases) == 2, \
            "one write per lane: d1's second batch waits for its first"
        sink.releases[1].set()  # d2's batch finishes first
        await _until(lambda: stream.acked, "an ack")
        assert stream.acked == [10, 11], "only the stored batch's messages are acked"
        sink.releases[0].set()
        await _until(lambda: len(sink.releases) == 3, "d1's second batch")
        sink.releases[2].set()
        await _until(lambda: len(stream.acked) == 6, "every ack")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert stream.acked == [10, 11, 0, 1, 2, 3] and len(sink.rows) == 6


class TrickleStream(FakeStream):
    """Hands one record over every ``every`` seconds, then waits forever."""

    def __init__(self, records: list[ConsumerRecord], every: float) -> None:
        super().__init__(records)
        self._every = every

    async def chunks(self):
        async for chunk in super().chunks():
            await asyncio.sleep(self._every)
            yield chunk


async def test_while_the_database_is_slow_batches_grow_instead_of_piling_up() -> None:
    sink, letters = GatedSink(), DeadLetters()
    config = IngestConfig(batch_points=1000, linger=0.02, retention=timedelta(days=90),
                          max_backoff=0.05, writers=1)
    stream = TrickleStream([event(reading(seconds=i % 60), i) for i in range(40)], every=0.01)
    task = asyncio.create_task(pipeline(sink, letters, config).run(stream))
    try:
        await _until(lambda: len(sink.releases) == 1, "the first write")
        await asyncio.sleep(0.8)  # every record arrives while the first write hangs
        for _ in range(5):
            sink.releases[-1].set()
            await asyncio.sleep(0.1)
        await _until(lambda: len(stream.acked) == 40, "every ack")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(sink.releases) <= 3, "one batch written, one waiting, one filling"


MINUTE_S = 60


def late_pipeline(sink: FakeSink, max_devices: int) -> IngestPipeline:
    letters = DeadLetters()
    config = IngestConfig(batch_points=3, linger=0.01, retention=timedelta(days=90),
                          max_backoff=0.05)
    return IngestPipeline(sink, letters, letters.publish, config,
                          event_clock=EventClock(grace_us=0, max_devices=max_devices))


async def test_a_device_first_seen_after_start_is_judged_by_its_stored_clock() -> None:
    sink = FakeSink()
    stored_at = int((NOW - timedelta(minutes=5)).timestamp() * 1_000_000)
    sink.rows[(stored_at, "d1", "t")] = 1.0  # stored before this worker started
    pipeline = late_pipeline(sink, max_devices=100)
    # 20 minutes before d1's stored clock: its bucket closed long ago. d2 is new.
    old = [event(reading(device=d, seconds=-20 * MINUTE_S), offset, device=d)
           for offset, d in enumerate(["d1", "d2"])]
    stream = FakeStream(old)
    await run_until(pipeline, stream, lambda: len(stream.acked) == 2)
    assert pipeline.stats.late_readings_total == 1, "d1's reading is late, d2's is not"
    assert sink.clock_reads == [["d1", "d2"]] or sorted(map(tuple, sink.clock_reads)) == [
        ("d1",), ("d2",)], "each device's clock is read once, when it first shows up"


async def test_evicting_clocks_changes_no_late_count() -> None:
    # Three devices, readings out of order by minutes: some late, some not.
    offsets_minutes = [0, 5, -3, 9, 2, -8, 12, 11, -20, 15, 14, 3]
    messages = [event(reading(device=d, seconds=m * MINUTE_S - 30 * MINUTE_S), i, device=d)
                for i, (m, d) in enumerate((m, d) for m in offsets_minutes
                                           for d in ("d1", "d2", "d3"))]
    counts = []
    for max_devices in (100, 1):
        sink = FakeSink()
        pipeline = late_pipeline(sink, max_devices)
        stream = FakeStream(list(messages))
        await run_until(pipeline, stream, lambda: len(stream.acked) == len(messages))
        counts.append((pipeline.stats.late_readings_total, len(sink.clock_reads)))
    (unbounded_late, unbounded_reads), (bounded_late, bounded_reads) = counts
    assert unbounded_late > 0 and bounded_late == unbounded_late
    assert bounded_reads > unbounded_reads, "the bounded clocks were evicted and read again"


async def test_in_shared_mode_each_reading_is_late_only_by_its_own_devices_clock() -> None:
    # One partition of the shared topic, devices interleaved in every fetch: d1 runs an
    # hour ahead of d2 and d3, whose readings would all be late by d1's clock.
    start = 3 * 3600
    offsets_minutes = [0, 5, -3, 9, 2, -8, 12, 11, -20, 15, 14, 3, 30, 1, 29, 28]
    lead = {"d1": 60, "d2": 0, "d3": 0}
    messages = [(d, start + (m + lead[d]) * MINUTE_S) for m in offsets_minutes
                for d in ("d1", "d2", "d3")]
    base = NOW - timedelta(seconds=start + 2 * 3600)
    records = [record(SHARED_TOPIC, d.encode(), {
        "device_id": d, "time": (base + timedelta(seconds=s)).isoformat(),
        "metrics": {"t": 1.0}}, offset=i) for i, (d, s) in enumerate(messages)]
    for per_fetch in (1, 7, len(records)):
        sink = FakeSink()
        pipeline = late_pipeline(sink, max_devices=100)
        stream = FakeStream(list(records), per_fetch=per_fetch)
        await run_until(pipeline, stream, lambda: len(stream.acked) == len(records))
        expected = late_by_own_device(messages)
        assert 0 < expected < late_by_own_device([("one", s) for _, s in messages])
        assert pipeline.stats.late_readings_total == expected, per_fetch


async def test_a_message_consumed_twice_is_dead_lettered_once() -> None:
    sink, letters = FakeSink(), DeadLetters()
    stream = FakeStream([event(b"[]", 7), event(b"[]", 7)])
    await run_until(pipeline(sink, letters), stream, lambda: len(stream.acked) == 2)
    assert [(r["offset"], r["error"][:11]) for r in letters.records] == [(7, "empty array")]


async def test_an_error_the_pipeline_cannot_handle_ends_the_worker_with_status_70(
        monkeypatch) -> None:
    exits: list[tuple[int, type]] = []

    def record_exit(code: int, why: str, exc: BaseException | None = None) -> None:
        exits.append((code, type(exc)))
        raise SystemExit(code)

    monkeypatch.setattr(agents.ingest, "exit_without_committing", record_exit)

    async def failing() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(SystemExit):
        await run_or_exit(failing())
    assert exits == [(70, RuntimeError)]


async def test_a_cancelled_pipeline_does_not_end_the_worker(monkeypatch) -> None:
    monkeypatch.setattr(agents.ingest, "exit_without_committing", pytest.fail)
    task = asyncio.create_task(run_or_exit(asyncio.Event().wait()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

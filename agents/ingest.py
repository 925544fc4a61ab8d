"""The ingest pipeline: Kafka messages in, rows and dead letters out, offsets acked last.

Messages come a fetch at a time from the consumer's record feed (``streams.record_feed``)
and are validated into batches. Each partition is bound to one of ``SINK_WRITERS`` lanes
for the pipeline's life; a lane fills one batch at a time until it holds
``SINK_BATCH_POINTS`` points or is ``SINK_LINGER`` seconds old, and its writer task stores
its batches one after another, in the order they were filled (retrying transient database
errors with capped backoff), publishes their dead letters, and only then acks their
offsets. Lanes write at the same time; within a lane nothing overtakes.

Invariants:

- A record's rows are written only after every earlier record of its partition is
  durable: earlier ones of this worker went in an earlier batch of the same lane (or
  earlier in the same batch, where the sink keeps arrival order), and anything before the
  offset this worker started from was durable before that offset was committed. So of two
  readings with the same key in one partition, the earlier one is stored, across retries,
  crashes and rebalances (the sink never replaces a stored key).
- Faust commits a partition's offset only up to its oldest message not yet acked, so an
  offset is committed only after everything before it is durable. A crash at any moment
  replays uncommitted messages, and the idempotent sink turns the replay into no new rows.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Protocol, Sequence

import asyncpg
import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from faust.types import TP, StreamT

from schema.dead_letters import DeadLetter, dead_letter
from schema.validation import (
    InvalidReading,
    Reading,
    ValidationWindow,
    validate_message,
)
from sinks.dead_letter_outbox import DeadLetterOutbox
from sinks.postgres import is_transient
from sinks.timescale import Point, TimescaleSink, WriteResult
from streams.stats import PipelineStats
from tables.event_clock import EventClock
from streams.topics import device_of_topic, expected_device

log = logging.getLogger(__name__)

COMMIT_INTERVAL_SECONDS = 1.0

# Starts publishing one dead letter; the awaitable it returns resolves once the broker has it.
PublishDeadLetter = Callable[[DeadLetter], Awaitable[Awaitable[Any]]]


class RecordSource(Protocol):
    """Where records come from (``streams.record_feed.RecordFeed`` in the worker)."""

    def chunks(self) -> AsyncIterator[list[tuple[TP, list[ConsumerRecord]]]]:
        """Fetched records, per partition in offset order, a fetch at a time."""

    def ack(self, offsets: Mapping[TP, Sequence[int]]) -> None:
        """Mark these records durable (their offsets may be committed)."""


@dataclass
class Batch:
    """Records taken from the feed whose rows and dead letters are not yet durable."""

    window: ValidationWindow
    created: float = field(default_factory=time.monotonic)
    offsets: dict[TP, list[int]] = field(default_factory=dict)  # to ack once durable
    records: list[ConsumerRecord] = field(default_factory=list)  # the ones validated
    points: list[Point] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # The valid readings' times, one list per run of consecutive messages of one device (a
    # fetch's records of one partition, per device topic): the event clocks observe a run
    # at once. Times only: the readings themselves are not kept until the write.
    event_times: list[tuple[str, list[int]]] = field(default_factory=list)

    def add(self, tp: TP, records: Sequence[ConsumerRecord], start: int, limit: int,
            follows: Callable[[str], bool] | None) -> int:
        """Validate ``records[start:]`` until the batch holds ``limit`` points; return the
        index of the first record not taken.

        Records of devices ``follows`` refuses are acked with the batch, untouched.
        """
        points, window, event_times = self.points, self.window, self.event_times
        offsets = self.offsets.setdefault(tp, [])
        device = device_of_topic(tp.topic)  # None on the shared topic: the key names it
        run: list[int] = []
        run_device: str | None = None
        index = start
        while index < len(records) and len(points) < limit:
            record = records[index]
            index += 1
            offsets.append(record.offset)
            expected = device or expected_device(tp.topic, record.key)
            if follows is not None and not follows(expected):
                continue
            self.records.append(record)
            valid, invalid = validate_message(record.value, expected, window)
            if valid:
                for reading in valid:
                    points.extend(_points_of(reading))
                if expected != run_device:
                    run, run_device = [], expected
                    event_times.append((expected, run))
                run.extend([reading.time_us for reading in valid])
            if invalid:
                self._dead_letter(record, invalid)
        return index

    def _dead_letter(self, record: ConsumerRecord, invalid: list[InvalidReading]) -> None:
        self.dead_letters.extend(dead_letter(reading, record) for reading in invalid)
        log.warning(
            "dead-lettering %d reading(s) of topic=%s partition=%d offset=%d: %s",
            len(invalid), record.topic, record.partition, record.offset, invalid[0].error,
        )


def _points_of(reading: Reading) -> Iterator[Point]:
    time_us, device_id = reading.time_us, reading.device_id
    for metric, value in reading.metrics.items():
        yield (time_us, device_id, metric, value)


@dataclass(frozen=True)
class IngestConfig:
    """How big and how old a batch may grow, and how long a validity window reaches back."""

    batch_points: int
    linger: float
    retention: timedelta
    max_backoff: float
    writers: int = 1  # lanes written at the same time (one connection each)


@dataclass
class Lane:
    """The batches of the partitions bound to one writer: one filling, the rest handed over
    and written one at a time in hand-over order."""

    batch: Batch
    handed_over: asyncio.Queue[Batch] = field(default_factory=asyncio.Queue)
    taken: asyncio.Event = field(default_factory=asyncio.Event)  # the writer took a batch
    partitions: int = 0  # bound to this lane


class IngestPipeline:
    """Runs the batching, writing and acking of one agent instance."""

    def __init__(
        self,
        sink: TimescaleSink,
        outbox: DeadLetterOutbox,
        publish_dead_letter: PublishDeadLetter,
        config: IngestConfig,
        stats: PipelineStats | None = None,
        commit_offsets: Callable[[], Awaitable[Any]] | None = None,
        event_clock: EventClock | None = None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sink = sink
        self._outbox = outbox
        self._publish = publish_dead_letter
        self._config = config
        self.stats = stats or PipelineStats()
        self._commit_offsets = commit_offsets
        self._clock = event_clock
        # True while Faust waits for every taken message to be acked (a rebalance or a
        # shutdown): then batches are written at once instead of after their linger time.
        self._draining = draining
        self._lanes = [Lane(self._new_batch()) for _ in range(config.writers)]
        # A partition stays in its lane for the pipeline's life: moving it could let a
        # later batch of it be written before an earlier one.
        self._lane_of: dict[TP, Lane] = {}
        self._next_commit = 0.0

    def _new_batch(self) -> Batch:
        now = datetime.now(timezone.utc)
        return Batch(window=ValidationWindow.around(now, self._config.retention))

    def _lane(self, tp: TP) -> Lane:
        lane = self._lane_of.get(tp)
        if lane is None:
            lane = min(self._lanes, key=lambda candidate: candidate.partitions)
            lane.partitions += 1
            self._lane_of[tp] = lane
        return lane

    async def run(self, feed: RecordSource,
                  follows: Callable[[str], bool] | None = None) -> None:
        """Consume ``feed`` until cancelled; ``follows`` limits the devices."""
        writers = [
            asyncio.create_task(self._write_batches(lane, feed), name=f"ingest-writer-{i}")
            for i, lane in enumerate(self._lanes)
        ]
        linger = asyncio.create_task(self._flush_old_batches(), name="ingest-linger")
        try:
            stats, limit = self.stats, self._config.batch_points
            async for chunk in feed.chunks():
                for tp, records in chunk:
                    lane = self._lane(tp)
                    start = 0
                    while start < len(records):
                        batch = lane.batch
                        before = len(batch.points)
                        end = batch.add(tp, records, start, limit, follows)
                        stats.messages_total += end - start
                        stats.points_total += len(batch.points) - before
                        if len(batch.points) >= limit:
                            self._hand_over(lane)
                            await self._room(lane)
                        start = end
                for writer in writers:
                    if writer.done():
                        writer.result()  # a writer never ends on its own: surface why it did
        finally:
            linger.cancel()
            for writer in writers:
                writer.cancel()

    def _hand_over(self, lane: Lane) -> None:
        """Queue the lane's batch for its writer (the queue's order is the writing order)."""
        batch, lane.batch = lane.batch, self._new_batch()
        lane.handed_over.put_nowait(batch)

    @staticmethod
    async def _room(lane: Lane) -> None:
        """Wait while more than one of the lane's batches waits for its writer (bounds memory)."""
        while lane.handed_over.qsize() > 1:
            lane.taken.clear()
            await lane.taken.wait()

    async def _flush_old_batches(self) -> None:
        tick = min(max(self._config.linger / 2, 0.01), 0.1)
        while True:
            await asyncio.sleep(tick)
            for lane in self._lanes:
                batch = lane.batch
                # While a batch already waits for the writer, this one keeps filling (up to
                # its size, where the feed loop waits): a slow database holds the feed back
                # instead of piling up batches in memory.
                if batch.offsets and lane.handed_over.empty() and (
                    time.monotonic() - batch.created >= self._config.linger or self._draining()
                ):
                    self._hand_over(lane)

    async def _write_batches(self, lane: Lane, feed: RecordSource) -> None:
        while True:
            batch = await lane.handed_over.get()
            lane.taken.set()
            newest = await self._observe_event_times(batch)
            await self._deliver(batch)
            self.stats.record_freshness(newest.values(), time.time_ns() // 1000)
            feed.ack(batch.offsets)
            if self._commit_offsets is not None and time.monotonic() >= self._next_commit:
                # Commit sooner than Faust's timer (a rebalance, e.g. when new device topics
                # arrive, then replays less), but at most once a second: each commit costs
                # the consumer time in proportion to its assigned partitions.
                self._next_commit = time.monotonic() + COMMIT_INTERVAL_SECONDS
                await self._commit_offsets()

    async def _observe_event_times(self, batch: Batch) -> dict[str, int]:
        """Count the batch's late readings on the devices' event clocks and return each
        device's newest reading time.

        Runs in the lane's writer, in batch order, when every earlier batch of the lane is
        durable: clocks evicted now are the database's, so loading them again (in one query
        for the devices of the batch not in memory) changes no count.
        """
        clock = self._clock
        if clock is not None:
            clock.evict()
            missing = clock.missing(device for device, _ in batch.event_times)
            if missing:
                stored = await self._retrying(
                    "read device clocks", lambda: self._sink.last_seen(missing), is_transient)
                clock.load(missing, stored)
        newest: dict[str, int] = {}
        late = 0
        for device, times in batch.event_times:  # runs of one device's readings, in order
            if clock is not None:
                late += clock.observe(device, times)
            time_us = max(times)
            if time_us > newest.get(device, 0):
                newest[device] = time_us
        self.stats.late_readings_total += late
        return newest

    async def _deliver(self, batch: Batch) -> WriteResult:
        """Make the batch's rows and dead letters durable, retrying until they are."""
        started = time.monotonic()
        result = await self._retrying("write rows", lambda: self._store(batch), is_transient)
        self.stats.db_available = True
        self.stats.record_batch(result, time.monotonic() - started)
        self.stats.series_cache = self._sink.cache_state()
        if batch.dead_letters:
            await self._dead_letter(batch.dead_letters)
        return result

    async def _retrying(
        self,
        what: str,
        attempt: Callable[[], Awaitable[Any]],
        retryable: Callable[[BaseException], bool],
    ) -> Any:
        delay = 0.1
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if not retryable(exc):
                    raise
                self.stats.retries_total += 1
                log.warning(
                    "%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.max_backoff)

    async def _store(self, batch: Batch) -> WriteResult:
        try:
            return await self._sink.write(batch.points)
        except Exception as exc:
            if is_transient(exc):
                self.stats.db_available = False
                raise
            if not isinstance(exc, asyncpg.PostgresError):
                raise
            log.error(
                "batch of %d points refused by the database (%s); isolating the readings at fault",
                len(batch.points), exc,
            )
        return await self._store_isolating_failures(batch)

    async def _store_isolating_failures(self, batch: Batch) -> WriteResult:
        """Store the batch in halving groups of readings; dead-letter each one the database refuses."""
        total = WriteResult(points=0, inserted=0)
        pending = [list(_located_readings(batch))]
        while pending:
            group = pending.pop()
            try:
                result = await self._sink.write([p for *_, r in group for p in _points_of(r)])
            except asyncpg.PostgresError as exc:
                if is_transient(exc):
                    raise
                if len(group) > 1:
                    middle = len(group) // 2
                    pending.extend((group[middle:], group[:middle]))
                else:
                    batch.dead_letters.append(_refused_by_database(*group[0], exc))
                continue
            total += result
        return total

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        """Publish each dead letter once: staged in the outbox, published, marked."""
        # A message redelivered into the same batch (after a rebalance) counts once.
        first: dict[tuple[str, int, int, int | None, int], DeadLetter] = {}
        for letter in letters:
            first.setdefault(letter.location, letter)
        letters = list(first.values())
        # Staging may read the DLQ (letters a crash left unconfirmed): broker errors retry.
        pending = await self._retrying(
            "record dead letters", lambda: self._outbox.stage(letters),
            lambda exc: is_transient(exc) or isinstance(exc, KafkaError),
        )
        if not pending:
            return
        # Any broker error is worth retrying: dropping a dead letter would lose a reading.
        positions = await self._retrying(
            "publish dead letters", lambda: self._publish_all(pending), lambda exc: True
        )
        await self._retrying(
            "mark dead letters published",
            lambda: self._outbox.mark_published(pending, positions), is_transient,
        )
        self.stats.dead_letters_total += len(pending)

    async def _publish_all(self, letters: list[DeadLetter]) -> list[tuple[int, int]]:
        """Publish ``letters``; where each landed on the DLQ (partition, offset)."""
        acks = [await self._publish(letter) for letter in letters]
        return [(ack.partition, ack.offset) for ack in await asyncio.gather(*acks)]


def _located_readings(batch: Batch) -> Iterator[tuple[ConsumerRecord, int | None, Reading]]:
    """Each valid reading of the batch with its record and its index in an array message."""
    for record in batch.records:
        device_id = expected_device(record.topic, record.key)
        readings, invalid = validate_message(record.value, device_id, batch.window)
        if not readings:
            continue
        decoded = orjson.loads(record.value)
        if not isinstance(decoded, list):
            yield record, None, readings[0]
            continue
        # Positions of the valid readings: the elements validate_message did not refuse.
        refused = {bad.index for bad in invalid}
        positions = (i for i in range(len(decoded)) if i not in refused)
        yield from ((record, index, reading) for index, reading in zip(positions, readings))


def _refused_by_database(
    record: ConsumerRecord, index: int | None, reading: Reading, exc: Exception
) -> DeadLetter:
    raw = orjson.dumps(
        {"device_id": reading.device_id, "time": reading.time.isoformat(), "metrics": reading.metrics}
    )
    invalid = InvalidReading(error=f"refused by the database: {exc}", raw=raw, index=index)
    log.error(
        "database refused reading of topic=%s partition=%d offset=%d: %s",
        record.topic, record.partition, record.offset, exc,
    )
    return dead_letter(invalid, record)


# --- Faust wiring -------------------------------------------------------------------------

from sinks.dead_letter_search import DeadLetterSearch  # noqa: E402
from sinks.postgres import DatabaseTLSError, check_tls, create_pool  # noqa: E402
from streams.application import app, device_topics, pipeline_stats, settings  # noqa: E402
from streams.faust_internals import our_consumer  # noqa: E402
from streams.subscription import follow_device_topics, followed_devices  # noqa: E402
from streams.topics import DEAD_LETTER_TOPIC, TopicProvisioner, kafka_client_kwargs  # noqa: E402
from streams.worker import EXIT_INGEST_FAILED, exit_without_committing  # noqa: E402


@app.agent(device_topics, name="ingest", concurrency=1)
async def ingest(stream: StreamT) -> None:
    """Validate, dead-letter and store every device reading."""
    log.info("ingest starting with settings %s", settings.redacted())
    try:
        await check_tls(settings)
    except DatabaseTLSError as exc:  # a wrong CA: no retry can help
        exit_without_committing(EXIT_INGEST_FAILED, str(exc))
    pool = await create_pool(settings)
    pipeline_stats.register_pool("ingest", pool)

    async def publish_dead_letter(letter: DeadLetter) -> Awaitable[Any]:
        return await app.producer.send(DEAD_LETTER_TOPIC, letter.key, letter.value, None, None, None)

    config = IngestConfig(
        batch_points=settings.sink.batch_points,
        linger=settings.sink.linger,
        retention=timedelta(days=settings.storage.retention_days),
        max_backoff=settings.db.retry_max_backoff,
        writers=settings.sink.writers,
    )
    try:
        pipeline = IngestPipeline(
            TimescaleSink(pool, cache_bytes=settings.sink.series_cache_mb << 20),
            DeadLetterOutbox(pool, DeadLetterSearch(DEAD_LETTER_TOPIC,
                                                    kafka_client_kwargs(settings))),
            publish_dead_letter, config,
            pipeline_stats, commit_offsets=app.consumer.commit,
            event_clock=EventClock(int(settings.sink.aggregate_grace * 1_000_000),
                                   settings.sink.event_clock_max_devices),
            draining=lambda: app.rebalancing or app.should_stop,
        )
        # Subscribes the agent's topics as iterating its stream would; their records then
        # come through the consumer's feed, never through the stream.
        aiter(stream.channel)
        await run_or_exit(pipeline.run(our_consumer(app).feed, followed_devices(settings)))
    finally:
        pipeline_stats.unregister_pool("ingest")
        await pool.close()


async def run_or_exit(run: Awaitable[None]) -> None:
    """Await the pipeline; end the worker on an error it could not handle (a bug, say).

    Faust would restart the agent in place, and the messages the failed one had taken would
    stay unwritten (and their partitions uncommitted) until the worker restarts: exiting
    makes that restart happen now, and loud.
    """
    try:
        await run
    except Exception as exc:
        exit_without_committing(EXIT_INGEST_FAILED, f"ingest failed ({type(exc).__name__})", exc)


@app.task
async def subscribe_device_topics() -> None:
    """Create the dead-letter topic, then follow device topics as they appear."""
    async with TopicProvisioner(settings) as topics:
        await topics.ensure([DEAD_LETTER_TOPIC])
        await follow_device_topics(app, device_topics, topics, settings)


@app.timer(1.0)
async def sample_pipeline_stats() -> None:
    """Feed the sliding-window rates of the stats views."""
    pipeline_stats.sample()

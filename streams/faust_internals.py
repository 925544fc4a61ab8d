"""Every touch of Faust's, mode's and aiokafka's private attributes, in one place.

Nothing else in the project reads or writes a name with a leading underscore of theirs
(``ruff check --select SLF001``, run by ``make test``, finds only this module). Each one
is named below with the public behaviour we rely on; ``tests/streams/test_faust_internals.py``
checks those behaviours against the real classes, and importing this module refuses any
version of the three packages it was not tested with.

Faust's own path, and what we change (docs/performance.md#what-profiling-found-and-fixed):

- Faust passes every fetched record through its conductor, a channel queue and a stream
  as a message and an event of its own. The records of ``App(feed_topics=...)`` skip
  that path: ``Consumer`` hands each fetch's records for them to ``Consumer.feed``
  (:mod:`streams.record_feed`), which the ingest pipeline reads and acks in bulk, into
  the bookkeeping Faust's commits read (``Consumer.register_read``,
  ``Consumer.ack_offsets``; Faust's own ``Consumer.ack(message)`` stays as it is for the
  records of other topics).
- Its commit tests each partition against a freshly built assignment set, which costs
  time in the square of the assigned partitions. ``ConsumerThread`` builds the set once
  per commit.
- It fixes the longest a fetch may wait for data at 1.5 s; ``App(fetch_max_wait=...)``
  (``KAFKA_FETCH_MAX_WAIT``) sets it.
- Its table manager sleeps a second before it registers the tables, and the conductor
  waits for that before the first subscription. This app has no tables:
  ``PromptTableManager`` registers them at once, a second off every start-up.

Nothing else changes: offsets are still committed only for acked records, gaps in a
partition's offsets do not hold its commits back, and a rebalance still stops the flow
and waits for every record taken to be acked before partitions are revoked.

The private names, and the behaviour each stands for:

- ``Consumer._read_offset[tp]``: the last offset handed over; records before it are
  dropped (read again after Faust sought back).
- ``Consumer._add_gap(tp, start, end)``: offsets with no record (end inclusive); commits
  pass over them.
- ``Consumer._committed_offset``, ``_acked``, ``_acked_index``: what Faust's commit reads
  to find the offset up to which every record is acked.
- ``Consumer._waiting_for_ack``: the future a rebalance or ``wait_empty`` awaits; set when
  acks arrive.
- ``Consumer._buffered_partitions``: partitions whose records Faust still delivers after
  the flow paused.
- ``Consumer._wait_next_records``, ``_new_consumer_thread``, ``_wait_for_ack``: the fetch
  loop's step, the thread factory and the ack wait, overridden or called here.
- ``AIOKafkaConsumerThread._create_worker_consumer``, ``_commit``, ``_ensure_consumer``,
  ``_consumer``: the aiokafka consumer and the commit, replaced above.
- aiokafka ``AIOKafkaConsumer._fetch_max_wait_ms``: read when its fetcher starts.
- ``Conductor._flag_changes()``, ``_topic_name_index``, ``_resubscribe_sleep_lock_seconds``:
  Faust's trigger to resubscribe after a channel's topics change, the names it subscribed,
  and how long it waits before resubscribing.
- ``App._new_transport``: the transport (and so the consumer class) of the app.
- ``TableManager._update_channels()``: registers the tables' changelog channels and sets
  the event the conductor's first subscription waits for.
"""
from __future__ import annotations

from importlib.metadata import version
from time import monotonic
from typing import Any, Callable, Iterable, Mapping, Sequence, cast

import faust
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from faust.tables import TableManager
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT

from streams.record_feed import RecordFeed

# The versions whose internals this module was written and tested against.
TESTED_VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


def check_versions(installed: Callable[[str], str] = version) -> None:
    """Refuse to run on versions of Faust, mode or aiokafka this module was not tested
    with: a renamed internal would not raise, and commits could stop or pass unwritten
    records. Upgrading means re-running tests/streams/test_faust_internals.py, then
    updating TESTED_VERSIONS."""
    found = {name: installed(name) for name in TESTED_VERSIONS}
    wrong = {name: v for name, v in found.items() if v != TESTED_VERSIONS[name]}
    if wrong:
        raise RuntimeError(
            "streams.faust_internals was tested with "
            + ", ".join(f"{n} {v}" for n, v in TESTED_VERSIONS.items())
            + "; installed: " + ", ".join(f"{n} {v}" for n, v in wrong.items())
            + ". Run tests/streams/test_faust_internals.py against them and update "
              "TESTED_VERSIONS, or install the tested versions.")


check_versions()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The thread owning the aiokafka consumer; commits in time linear in partitions."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts its fetcher; Faust passes no way to set it.
        consumer._fetch_max_wait_ms = int(our_app(self.app).fetch_max_wait * 1000)
        return consumer

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        consumer = self._ensure_consumer()
        assigned = self.assignment()
        commitable = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        self.tp_last_committed_at.update(dict.fromkeys(commitable, monotonic()))
        try:
            await consumer.commit({faust_aiokafka.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
                                   for tp, offset in commitable.items()})
        except CommitFailedError as exc:
            if "already rebalanced" in str(exc):
                return False
            self.log.exception("Committing raised exception: %r", exc)
            await self.crash(exc)
            return False
        except Exception as exc:
            self.log.exception("Got exception: %r\nCurrent assignment: %r", exc, assigned)
            await self.crash(exc)
            return False
        return True


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer handing the records of ``app.feed_topics`` to ``feed``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feed = RecordFeed(self, our_app(self.app).feed_topics)
        # Monotonic time the fetch loop last came back (with records or not; about once a
        # second when idle): the readiness check's sign that the worker still fetches.
        self.last_fetch_at: float | None = None

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        records, active = await super()._wait_next_records(timeout)
        self.last_fetch_at = monotonic()
        if records and self.flow_active and not self.should_stop:
            records = await self.feed.take(records, active)
        return records, active

    def buffered(self, tp: TP) -> bool:
        """Whether Faust still delivers ``tp``'s records although the flow paused."""
        return tp in self._buffered_partitions

    async def register_read(self, tp: TP, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """Faust's read-offset bookkeeping for records handed over: drop those read
        already, register the gaps in their offsets (so that they do not hold commits
        back), note the last offset read. Returns the records not read before.

        A gap is the offsets between two records (``_add_gap`` takes an inclusive end).
        Faust's drain loop also puts the later record's own offset in it, which holds that
        offset's commit back by one round; this does not.
        """
        read = self._read_offset[tp]
        if read is not None and records[0].offset < read:
            records = [r for r in records if r.offset >= read]
            if not records:
                return records
        if records[-1].offset - records[0].offset == len(records) - 1:  # no gap inside
            if read and records[0].offset - read > 1:
                await self._add_gap(tp, read + 1, records[0].offset - 1)
        else:
            previous = read
            for record in records:
                if previous and record.offset - previous > 1:
                    await self._add_gap(tp, previous + 1, record.offset - 1)
                previous = record.offset
        self._read_offset[tp] = records[-1].offset
        return records

    def ack_offsets(self, offsets: Mapping[TP, Sequence[int]]) -> None:
        """Mark these offsets durable (Faust may commit past them), and wake whoever waits
        for acks. Offsets of partitions no longer assigned are ignored: their new owner
        reads them again."""
        assigned = self.assignment()
        for tp, tp_offsets in offsets.items():
            if tp not in assigned:
                continue
            committed = self._committed_offset[tp]
            acked_index = self._acked_index[tp]
            new = [o for o in tp_offsets
                   if (committed is None or o >= committed) and o not in acked_index]
            acked_index.update(new)
            self._acked[tp].extend(new)
        waiter = self._waiting_for_ack
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def subscribed_topics(self) -> frozenset[str]:
        """The topics the aiokafka consumer is subscribed to."""
        return frozenset(self._thread._ensure_consumer().subscription())

    async def wait_empty(self) -> None:
        """Wait until the feed's records are acked too, then Faust's own messages."""
        while self.feed.pending and not self.should_stop:
            await self.commit()
            await self._wait_for_ack(timeout=1)
        await super().wait_empty()


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class PromptTableManager(TableManager):
    """Faust's table manager, started without its one-second sleep (Faust 0.15.3 sleeps
    1.0 s in ``on_start``, then registers the tables and starts recovery)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class App(faust.App):
    """``faust.App`` whose consumer is :class:`Consumer`: ``fetch_max_wait`` in seconds,
    ``feed_topics`` names the topics whose records go to ``app.consumer.feed``; its table
    manager is :class:`PromptTableManager`."""

    def __init__(self, *args: Any, fetch_max_wait: float = 1.5,
                 feed_topics: Callable[[str], bool] = lambda topic: False, **kwargs: Any) -> None:
        self.fetch_max_wait = fetch_max_wait
        self.feed_topics = feed_topics
        kwargs.setdefault("TableManager", PromptTableManager)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)


class GrowingTopic(faust.Topic):
    """A topic channel whose list of topic names can grow at run time.

    The agent iterates over a clone of its channel; every clone shares one list of names,
    so names added later reach the clone that the conductor subscribes with.
    """

    def __init__(self, *args: Any, shared_names: list[str] | None = None, **kwargs: Any) -> None:
        self._names: list[str] = [] if shared_names is None else shared_names
        super().__init__(*args, **kwargs)

    @property
    def topics(self) -> list[str]:
        return self._names

    @topics.setter
    def topics(self, names: Iterable[str]) -> None:
        if names is not self._names:
            self._names[:] = list(names)

    def _clone_args(self) -> Mapping[str, Any]:
        return {**super()._clone_args(), "shared_names": self._names}

    def add_topics(self, names: Iterable[str]) -> list[str]:
        """Add names not yet subscribed; return the ones that were new."""
        new = sorted(set(names) - set(self._names))
        if new:
            self._names.extend(new)
            request_resubscription(self.app)  # Faust's own trigger to resubscribe
        return new

    def resubscribe_if_dropped(self) -> bool:
        """Ask Faust again for names its subscription lacks; True when some were missing.

        Faust's conductor drops a subscription change that arrives while a rebalance is
        under way (it clears the request without resubscribing), so each round checks that
        every name made it into the conductor's index.
        """
        if self.app.rebalancing:
            return False
        subscribed = subscribed_by_conductor(self.app)
        missing = [name for name in self._names if name not in subscribed]
        if missing:
            request_resubscription(self.app)  # Faust's own trigger to resubscribe
        return bool(missing)


def our_app(app: AppT) -> App:
    """``app`` as the :class:`App` it is (TypeError for another app)."""
    if not isinstance(app, App):
        raise TypeError(f"{type(app).__name__} is not a streams.faust_internals.App")
    return app


def our_consumer(app: AppT) -> Consumer:
    """``app``'s consumer as the :class:`Consumer` it is (TypeError for another one)."""
    consumer = app.consumer
    if not isinstance(consumer, Consumer):
        raise TypeError(f"{type(consumer).__name__} is not a streams.faust_internals.Consumer")
    return consumer


def _conductor(app: AppT) -> Conductor:
    """``app.topics``, which Faust types as the ``ConductorT`` interface, as the
    ``Conductor`` it is (whose private attributes are used below)."""
    return cast(Conductor, app.topics)


def request_resubscription(app: AppT) -> None:
    """Ask Faust's conductor to resubscribe (a channel's topics changed)."""
    _conductor(app)._flag_changes()


def subscribed_by_conductor(app: AppT) -> Iterable[str]:
    """The topic names Faust's conductor subscribed to."""
    return _conductor(app)._topic_name_index


def set_resubscribe_delay(app: AppT, seconds: float) -> None:
    """How long Faust's conductor waits after a change before it resubscribes."""
    _conductor(app)._resubscribe_sleep_lock_seconds = seconds

"""Faust's aiokafka consumer with a bulk path for the ingest topics, and its app class.

Measured with py-spy on faust-streaming 0.15.3 (README, "Performance"):

- Faust passes every fetched record through its conductor, a channel queue and a stream
  as a message and an event of its own. The records of ``App(feed_topics=...)`` skip
  that path: ``Consumer`` hands each fetch's records for them to ``Consumer.feed``
  (:mod:`streams.record_feed`), which the ingest pipeline reads and acks in bulk.
- Its commit tests each partition against a freshly built assignment set, which costs
  time in the square of the assigned partitions (15% of a worker's CPU with 1,000
  partitions). ``ConsumerThread`` builds the set once per commit.
- It fixes the longest a fetch may wait for data at 1.5 s, and with it messages reached
  the agent late (p50 403 ms at 1.5 s, 8 ms at 0.1 s, one message every 100 ms), although
  the local broker answers a plain aiokafka fetch within about 5 ms of new data, with 1 or
  100 partitions: the delay comes from how Faust's draining and the fetcher's requests
  interleave, not pinned down yet. ``App(fetch_max_wait=...)`` (``KAFKA_FETCH_MAX_WAIT``)
  sets it; a shorter wait costs fetch requests (CPU in broker and worker) under load.

Nothing else changes: offsets are still committed only for acked records, and a
rebalance still stops the flow and waits for every record taken to be acked before
partitions are revoked.
"""
from __future__ import annotations

from time import monotonic
from typing import Any, Callable, Mapping

import faust
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.record_feed import RecordFeed


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The thread owning the aiokafka consumer; commits in time linear in partitions."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts its fetcher; Faust passes no way to set it.
        consumer._fetch_max_wait_ms = int(self.app.fetch_max_wait * 1000)
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
        self.feed = RecordFeed(self, self.app.feed_topics)
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

    async def wait_empty(self) -> None:
        """Wait until the feed's records are acked too, then Faust's own messages."""
        while self.feed.pending and not self.should_stop:
            await self.commit()
            await self._wait_for_ack(timeout=1)
        await super().wait_empty()


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    """``faust.App`` whose consumer is :class:`Consumer`: ``fetch_max_wait`` in seconds,
    ``feed_topics`` names the topics whose records go to ``app.consumer.feed``."""

    def __init__(self, *args: Any, fetch_max_wait: float = 1.5,
                 feed_topics: Callable[[str], bool] = lambda topic: False, **kwargs: Any) -> None:
        self.fetch_max_wait = fetch_max_wait
        self.feed_topics = feed_topics
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

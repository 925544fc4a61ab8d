"""Faust's aiokafka consumer without two hot-path costs, and the app class that uses it.

Measured with py-spy on faust-streaming 0.15.3 (README, "Performance"):

- Faust hands every fetched message to its conductor through
  ``wait_first(callback(message), suspend_flow.wait())``, which creates four tasks per
  message so that a rebalance can interrupt a delivery stuck on a full stream buffer.
  While the flow is not suspended, ``Consumer`` delivers inline instead and keeps Faust's
  way only for a suspended flow: a bare agent went from 11k to 21k messages/s.
- Its commit tests each partition against a freshly built assignment set, which costs
  time in the square of the assigned partitions (15% of a worker's CPU with 1,000
  partitions). ``ConsumerThread`` builds the set once per commit.
- It fixes the longest a fetch may wait for data at 1.5 s, and with it messages reached
  the agent late (p50 403 ms at 1.5 s, 8 ms at 0.1 s, one message every 100 ms), although
  the local broker answers a plain aiokafka fetch within about 5 ms of new data, with 1 or
  100 partitions: the delay comes from how Faust's draining and the fetcher's requests
  interleave, not pinned down yet. ``App(fetch_max_wait=...)`` (``KAFKA_FETCH_MAX_WAIT``)
  sets it; a shorter wait costs fetch requests (CPU in broker and worker) under load.

Nothing else changes: offsets are still committed only for acked messages, and a
rebalance still suspends the flow before partitions are revoked.
"""
from __future__ import annotations

from time import monotonic
from typing import Any, Mapping

import faust
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults


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
    """Faust's aiokafka consumer delivering fetched messages inline while flow is active."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if timeout is None and len(coros) == 2 and self._is_suspend_wait(coros[1]) \
                and not self.suspend_flow.is_set() and not self.should_stop:
            delivery, suspended = coros
            suspended.close()
            result = await delivery
            return WaitResults([delivery], [result], False)
        return await super().wait_first(*coros, timeout=timeout)

    def _is_suspend_wait(self, coro: Any) -> bool:
        """True for the coroutine ``self.suspend_flow.wait()`` (the drain loop's pair)."""
        frame = getattr(coro, "cr_frame", None)
        return frame is not None and frame.f_locals.get("self") is self.suspend_flow


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    """``faust.App`` whose consumer is :class:`Consumer`; ``fetch_max_wait`` in seconds."""

    def __init__(self, *args: Any, fetch_max_wait: float = 1.5, **kwargs: Any) -> None:
        self.fetch_max_wait = fetch_max_wait
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

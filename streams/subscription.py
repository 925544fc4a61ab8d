"""Subscribing to device topics that appear while the worker runs.

Faust 0.15's pattern subscription never subscribes with the aiokafka driver, so the
worker lists the broker's topics every ``TOPIC_DISCOVERY_INTERVAL`` seconds and adds new
device topics to one growing topic channel, which makes Faust resubscribe (one rebalance
per round of new topics, not per topic).
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Iterable, Mapping

import faust
from faust.types import AppT

from streams.settings import Settings
from streams.topics import TopicProvisioner, device_of_topic

log = logging.getLogger(__name__)

# Faust waits this long after a subscription change before resubscribing, to gather more
# changes into one rebalance (its default, 45 s, would delay every new device too long).
RESUBSCRIBE_DELAY_SECONDS = 1.0


class GrowingTopic(faust.Topic):
    """A topic channel whose list of topic names can grow at run time.

    The agent iterates over a clone of its channel; every clone shares one list of names,
    so names added later reach the clone that the conductor subscribes with.
    """

    def __init__(self, *args: Any, shared_names: list[str] | None = None, **kwargs: Any) -> None:
        self._names: list[str] = [] if shared_names is None else shared_names
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
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
            self.app.topics._flag_changes()  # Faust's own trigger to resubscribe
        return new


async def follow_device_topics(
    app: AppT, channel: GrowingTopic, topics: TopicProvisioner, settings: Settings
) -> None:
    """Keep ``channel`` subscribed to every device topic the broker has, until cancelled."""
    app.topics._resubscribe_sleep_lock_seconds = RESUBSCRIBE_DELAY_SECONDS
    wanted = re.compile(settings.device_filter)
    while True:
        try:
            names = await topics.list_device_topics()
            new = channel.add_topics(t for t in names if wanted.match(device_of_topic(t) or ""))
        except Exception as exc:  # the broker may be restarting: try again next round
            log.warning("listing device topics failed: %s: %s", type(exc).__name__, exc)
        else:
            if new:
                log.info("subscribing to %d new device topic(s): %s%s", len(new),
                         ", ".join(new[:10]), " ..." if len(new) > 10 else "")
        await asyncio.sleep(settings.topic_discovery_interval)

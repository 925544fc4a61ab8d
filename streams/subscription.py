"""Which topics (and devices) a worker follows.

``TOPIC_MODE=per-device``: Faust 0.15's pattern subscription never subscribes with the
aiokafka driver, so the worker lists the broker's topics every ``TOPIC_DISCOVERY_INTERVAL``
seconds and adds new device topics to one growing topic channel, which makes Faust
resubscribe (one rebalance per round of new topics, not per topic). ``DEVICE_FILTER``
limits which device topics it subscribes to.

``TOPIC_MODE=shared``: the worker subscribes once to ``device-data`` (creating it if
needed); there is nothing to discover. ``DEVICE_FILTER`` then limits which messages it
processes: the others (by key) are acked untouched.

``TOPIC_MODE=both`` (while a deployment moves from per-device topics to shared): both of
the above in one subscription, ``device-data`` and the device topics; ``DEVICE_FILTER``
selects device topics by name and shared-topic messages by key.

The rules are here once: ``followed_topics`` (which topics; the lag route and ``replay``
use it too) and ``followed_devices`` (which messages).
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable

from faust.types import AppT

from streams.faust_internals import GrowingTopic, set_resubscribe_delay
from streams.settings import Settings
from streams.topics import SHARED_TOPIC, TopicProvisioner, device_of_topic

log = logging.getLogger(__name__)

# Faust waits this long after a subscription change before resubscribing, to gather more
# changes into one rebalance (its default, 45 s, would delay every new device too long).
RESUBSCRIBE_DELAY_SECONDS = 1.0


def followed_topics(settings: Settings) -> Callable[[str], bool]:
    """Whether the workers (of this consumer group) consume a topic: ``device-data`` when
    ``TOPIC_MODE`` reads the shared topic, the device topics whose device ``DEVICE_FILTER``
    matches when it reads device topics; never the dead-letter topic nor any other."""
    mode = settings.topics.mode
    wanted = re.compile(settings.topics.device_filter)

    def followed(topic: str) -> bool:
        if topic == SHARED_TOPIC:
            return mode.reads_shared_topic
        device = device_of_topic(topic)
        return (mode.reads_device_topics and device is not None
                and wanted.match(device) is not None)
    return followed


def followed_devices(settings: Settings) -> Callable[[str], bool] | None:
    """Which devices' messages this worker processes, by device id; None: every message.

    Device topics are filtered by subscription (``followed_topics``). On the shared topic
    (``shared`` and ``both`` modes) with a ``DEVICE_FILTER``, messages of other devices (by
    key: ``expected_device``) are acked untouched (Faust commits an offset only once every
    message before it is acked, so that is safe). Applied to a followed device topic's
    messages too, it accepts them all: their device is the topic's, which matched.
    """
    if not settings.topics.mode.reads_shared_topic or not settings.topics.device_filter:
        return None
    wanted = re.compile(settings.topics.device_filter)
    return lambda device_id: wanted.match(device_id) is not None


async def _topics_now(topics: TopicProvisioner, settings: Settings) -> set[str]:
    """The topics to read that exist now: ``device-data`` (created if missing) when the mode
    reads it, the broker's device topics when it reads those (unfiltered)."""
    mode = settings.topics.mode
    names: set[str] = set()
    if mode.reads_shared_topic:
        await topics.ensure([SHARED_TOPIC])  # asks the broker only until it succeeded once
        names.add(SHARED_TOPIC)
    if mode.reads_device_topics:
        names |= await topics.list_device_topics()
    return names


async def subscribe_existing(channel: GrowingTopic, settings: Settings) -> None:
    """Put the topics that exist now into the first subscription.

    Called before the app starts, so a worker's first partition assignment already holds
    them: one consumer-group join at start, not a second one once they are added (a join
    takes seconds on Tansu, and after a later rebalance a worker sometimes stopped
    fetching; docs/performance.md#worker-start-up-against-a-large-fleet). In shared and
    both modes that includes ``device-data``, created if missing.
    """
    try:
        async with TopicProvisioner(settings) as topics:
            names = await _topics_now(topics, settings)
    except Exception as exc:  # the discovery loop will find them later
        log.warning("preparing the first subscription failed: %s: %s", type(exc).__name__, exc)
        return
    new = channel.add_topics(filter(followed_topics(settings), names))
    log.info("topic mode %s: starting with %s", settings.topics.mode.value, _described(new))


def _described(names: list[str]) -> str:
    devices = sum(1 for name in names if name != SHARED_TOPIC)
    parts = [SHARED_TOPIC] if SHARED_TOPIC in names else []
    if devices or not parts:
        parts.append(f"{devices} device topic(s)")
    return " and ".join(parts)


async def follow_device_topics(
    app: AppT, channel: GrowingTopic, topics: TopicProvisioner, settings: Settings
) -> None:
    """Keep ``channel`` subscribed to the topics ``followed_topics`` accepts, until
    cancelled: every ``TOPIC_DISCOVERY_INTERVAL``, the device topics the broker has (per-device
    and both modes) and ``device-data``, created if missing (shared and both modes).

    In shared topic mode there is nothing to discover: it returns once ``device-data`` is
    subscribed.
    """
    set_resubscribe_delay(app, RESUBSCRIBE_DELAY_SECONDS)
    mode = settings.topics.mode
    followed = followed_topics(settings)
    while True:
        try:
            names = await _topics_now(topics, settings)
            if mode.reads_device_topics:
                channel.resubscribe_if_dropped()
            new = channel.add_topics(filter(followed, names))
        except Exception as exc:  # the broker may be restarting: try again next round
            log.warning("looking for topics to follow failed: %s: %s", type(exc).__name__, exc)
        else:
            if new:
                log.info("subscribing to %d new topic(s): %s%s", len(new),
                         ", ".join(new[:10]), " ..." if len(new) > 10 else "")
            if not mode.reads_device_topics:
                return
        await asyncio.sleep(settings.topics.discovery_interval)

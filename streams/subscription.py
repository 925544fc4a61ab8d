"""Which topics (and devices) a worker follows.

``TOPIC_MODE=per-device``: Faust 0.15's pattern subscription never subscribes with the
aiokafka driver, so the worker lists the broker's topics every ``TOPIC_DISCOVERY_INTERVAL``
seconds and adds new device topics to one growing topic channel, which makes Faust
resubscribe (one rebalance per round of new topics, not per topic). ``DEVICE_FILTER``
limits which device topics it subscribes to.

``TOPIC_MODE=shared``: the worker subscribes once to ``device-data`` (creating it if
needed); there is nothing to discover. ``DEVICE_FILTER`` then limits which messages it
processes: the others (by key) are acked untouched.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable, Iterable

from faust.types import AppT

from streams.faust_internals import GrowingTopic, set_resubscribe_delay
from streams.settings import Settings, TopicMode
from streams.topics import SHARED_TOPIC, TopicProvisioner, device_of_topic

log = logging.getLogger(__name__)

# Faust waits this long after a subscription change before resubscribing, to gather more
# changes into one rebalance (its default, 45 s, would delay every new device too long).
RESUBSCRIBE_DELAY_SECONDS = 1.0


async def subscribe_existing(channel: GrowingTopic, settings: Settings) -> None:
    """Put the topics that exist now into the first subscription.

    Called before the app starts, so a worker's first partition assignment already holds
    them: one consumer-group join at start, not a second one once they are added (a join
    takes seconds on Tansu, and after a later rebalance a worker sometimes stopped
    fetching; docs/performance.md#worker-start-up-against-a-large-fleet). In shared mode
    that is ``device-data``, created if missing.
    """
    try:
        async with TopicProvisioner(settings) as topics:
            if settings.topics.mode is TopicMode.SHARED:
                await topics.ensure([SHARED_TOPIC])
                names = {SHARED_TOPIC}
            else:
                names = await topics.list_device_topics()
    except Exception as exc:  # the discovery loop will find them later
        log.warning("preparing the first subscription failed: %s: %s", type(exc).__name__, exc)
        return
    if settings.topics.mode is TopicMode.SHARED:
        channel.add_topics(names)
        log.info("shared topic mode: starting with %s", SHARED_TOPIC)
        return
    new = _add_followed(channel, names, re.compile(settings.topics.device_filter))
    log.info("starting with %d device topic(s)", len(new))


def _add_followed(
    channel: GrowingTopic, names: Iterable[str], wanted: re.Pattern[str]
) -> list[str]:
    """Add the device topics whose device ``wanted`` matches; return the new ones."""
    return channel.add_topics(t for t in names if wanted.match(device_of_topic(t) or ""))


async def follow_device_topics(
    app: AppT, channel: GrowingTopic, topics: TopicProvisioner, settings: Settings
) -> None:
    """Keep ``channel`` subscribed to every device topic the broker has, until cancelled.

    In shared topic mode: subscribe ``channel`` to ``device-data`` (created if missing) and
    return.
    """
    set_resubscribe_delay(app, RESUBSCRIBE_DELAY_SECONDS)
    if settings.topics.mode is TopicMode.SHARED:
        await _follow_shared_topic(channel, topics, settings)
        return
    wanted = re.compile(settings.topics.device_filter)
    while True:
        try:
            names = await topics.list_device_topics()
            channel.resubscribe_if_dropped()
            new = _add_followed(channel, names, wanted)
        except Exception as exc:  # the broker may be restarting: try again next round
            log.warning("listing device topics failed: %s: %s", type(exc).__name__, exc)
        else:
            if new:
                log.info("subscribing to %d new device topic(s): %s%s", len(new),
                         ", ".join(new[:10]), " ..." if len(new) > 10 else "")
        await asyncio.sleep(settings.topics.discovery_interval)


async def _follow_shared_topic(
    channel: GrowingTopic, topics: TopicProvisioner, settings: Settings
) -> None:
    while True:
        try:
            await topics.ensure([SHARED_TOPIC])
        except Exception as exc:  # the broker may be restarting: try again
            log.warning("creating topic %s failed: %s: %s", SHARED_TOPIC, type(exc).__name__, exc)
            await asyncio.sleep(settings.topics.discovery_interval)
            continue
        if channel.add_topics([SHARED_TOPIC]):
            log.info("shared topic mode: subscribing to %s", SHARED_TOPIC)
        return


def followed_devices(settings: Settings) -> Callable[[str], bool] | None:
    """Which devices' messages this worker processes, by device id; None: every message.

    Per-device mode filters by subscription (see ``follow_device_topics``). In shared mode
    with a ``DEVICE_FILTER``, messages of other devices (by key: ``expected_device``) are
    acked untouched (Faust commits an offset only once every message before it is acked,
    so that is safe).
    """
    if settings.topics.mode is not TopicMode.SHARED or not settings.topics.device_filter:
        return None
    wanted = re.compile(settings.topics.device_filter)
    return lambda device_id: wanted.match(device_id) is not None

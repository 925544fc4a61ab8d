"""Topic names: only valid device ids become topics."""
from __future__ import annotations

import pytest

from streams.topics import InvalidDeviceId, device_of_topic, device_topic


def test_device_topic_is_prefix_plus_device_id() -> None:
    assert device_topic("sensor-001") == "device-data-sensor-001"
    assert device_of_topic("device-data-sensor-001") == "sensor-001"


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "é", "a/b", "../x", "a\x00"])
def test_invalid_device_ids_never_become_topic_names(bad: str) -> None:
    with pytest.raises(InvalidDeviceId):
        device_topic(bad)


@pytest.mark.parametrize("topic", ["device-data.dlq", "other", "device-data-", "device-data-a b"])
def test_non_device_topics_are_not_taken_for_device_topics(topic: str) -> None:
    assert device_of_topic(topic) is None

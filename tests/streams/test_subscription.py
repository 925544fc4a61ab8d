"""The growing device-topic channel: names added at run time reach Faust's subscription."""
from __future__ import annotations

import pytest

from streams.app import app
from streams.faust_internals import GrowingTopic


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch) -> tuple[GrowingTopic, list[int]]:
    flags: list[int] = []
    monkeypatch.setattr(app.topics, "_flag_changes", lambda: flags.append(1))
    monkeypatch.setattr(app.topics, "_topic_name_index", {})
    return GrowingTopic(app, key_serializer="raw", value_serializer="raw"), flags


def test_clones_share_the_names_added_later(channel) -> None:
    topic, flags = channel
    clone = topic.clone(is_iterator=True)
    assert topic.add_topics(["device-data-b", "device-data-a"]) == ["device-data-a", "device-data-b"]
    assert clone.topics == ["device-data-a", "device-data-b"] and flags == [1]
    assert topic.add_topics(["device-data-a"]) == [] and flags == [1]


def test_a_name_faust_dropped_during_a_rebalance_is_asked_for_again(channel, monkeypatch) -> None:
    topic, flags = channel
    topic.add_topics(["device-data-a"])
    monkeypatch.setattr(app, "rebalancing", True)
    assert topic.resubscribe_if_dropped() is False  # wait for the rebalance to end
    monkeypatch.setattr(app, "rebalancing", False)
    assert topic.resubscribe_if_dropped() is True and flags == [1, 1]
    app.topics._topic_name_index["device-data-a"] = {topic}
    assert topic.resubscribe_if_dropped() is False

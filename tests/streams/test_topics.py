"""Topic names and topic modes: only valid device ids become topics; the shared topic and the
dead-letter topic are never taken for device topics; which device a message must hold."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.ingest import Batch
from schema.validation import ValidationWindow
from tests.records import record, tp_of

from streams.settings import ConfigError, Settings, TopicMode
from streams.subscription import (
    follow_device_topics,
    followed_devices,
    followed_topics,
    subscribe_existing,
)
from streams.topics import (
    DEAD_LETTER_TOPIC,
    PUBLISHING_MODES,
    SHARED_TOPIC,
    InvalidDeviceId,
    device_of_topic,
    device_topic,
    expected_device,
    is_ingest_topic,
    topic_for,
)


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


# --- topic modes ----------------------------------------------------------------------------


def test_topic_mode_defaults_to_per_device_and_refuses_unknown_modes() -> None:
    assert Settings.from_env({}).topics.mode is TopicMode.PER_DEVICE
    assert Settings.from_env({"TOPIC_MODE": "Shared"}).topics.mode is TopicMode.SHARED
    with pytest.raises(ConfigError, match="TOPIC_MODE must be one of per-device, shared"):
        Settings.from_env({"TOPIC_MODE": "per_device"})


def test_each_mode_names_the_topic_a_device_publishes_to() -> None:
    assert topic_for("sensor-001", TopicMode.PER_DEVICE) == "device-data-sensor-001"
    assert topic_for("sensor-001", TopicMode.SHARED) == "device-data"
    with pytest.raises(ValueError, match="topic mode must be a TopicMode"):
        topic_for("sensor-001", "shared")  # type: ignore[arg-type]  # a string is no mode


def test_both_is_a_worker_mode_a_producer_cannot_publish_in() -> None:
    assert Settings.from_env({"TOPIC_MODE": "BOTH"}).topics.mode is TopicMode.BOTH
    assert PUBLISHING_MODES == (TopicMode.PER_DEVICE, TopicMode.SHARED)
    with pytest.raises(ConfigError, match="TOPIC_MODE=both is a worker mode for moving from "
                                          "per-device topics to shared; a producer publishes "
                                          "to one: set per-device or shared"):
        topic_for("sensor-001", TopicMode.BOTH)


@pytest.mark.parametrize("mode", PUBLISHING_MODES)
@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "é"])
def test_invalid_device_ids_are_refused_in_both_modes(mode: TopicMode, bad: str) -> None:
    with pytest.raises(InvalidDeviceId):
        topic_for(bad, mode)


def test_the_shared_and_dead_letter_topics_are_never_device_topics() -> None:
    assert device_of_topic(SHARED_TOPIC) is None
    assert device_of_topic(DEAD_LETTER_TOPIC) is None
    assert is_ingest_topic(SHARED_TOPIC) and is_ingest_topic("device-data-a")
    assert not is_ingest_topic(DEAD_LETTER_TOPIC)
    assert not is_ingest_topic("device-data-") and not is_ingest_topic("other")


def test_on_a_device_topic_the_topic_names_the_device_whatever_the_key() -> None:
    assert expected_device("device-data-a", b"b") == "a"
    assert expected_device("device-data-a", None) == "a"


def test_on_the_shared_topic_the_key_names_the_device() -> None:
    assert expected_device(SHARED_TOPIC, b"sensor-001") == "sensor-001"
    # A missing or undecodable key matches no reading (None would accept any device).
    assert expected_device(SHARED_TOPIC, None) == ""
    assert expected_device("other-topic", b"sensor-001") == ""
    assert expected_device(SHARED_TOPIC, b"\xff") == "\ufffd"


class FakeChannel:
    def __init__(self) -> None:
        self.names: list[str] = []

    def add_topics(self, names: Any) -> list[str]:
        new = [n for n in names if n not in self.names]
        self.names += new
        return new

    def resubscribe_if_dropped(self) -> bool:
        return False


class FakeProvisioner:
    def __init__(self, topics: set[str]) -> None:
        self.topics, self.ensured = topics, []

    async def list_device_topics(self) -> set[str]:
        return {t for t in self.topics if device_of_topic(t)}

    async def ensure(self, names: Any, **kwargs: Any) -> None:
        self.ensured += list(names)


def _app() -> Any:
    return SimpleNamespace(topics=SimpleNamespace(_resubscribe_sleep_lock_seconds=45))


async def test_shared_mode_subscribes_to_device_data_only_after_creating_it() -> None:
    channel, topics = FakeChannel(), FakeProvisioner({"device-data-a", SHARED_TOPIC})
    settings = Settings.from_env({"TOPIC_MODE": "shared"})
    await asyncio.wait_for(follow_device_topics(_app(), channel, topics, settings), 1)
    assert channel.names == [SHARED_TOPIC] and topics.ensured == [SHARED_TOPIC]


async def test_per_device_mode_subscribes_to_device_topics_never_to_shared_or_dlq() -> None:
    channel = FakeChannel()
    topics = FakeProvisioner({"device-data-a", "device-data-b", SHARED_TOPIC, DEAD_LETTER_TOPIC})
    settings = Settings.from_env({"TOPIC_DISCOVERY_INTERVAL": "0.5"})
    task = asyncio.create_task(follow_device_topics(_app(), channel, topics, settings))
    await asyncio.sleep(0.1)
    task.cancel()
    assert sorted(channel.names) == ["device-data-a", "device-data-b"]


def test_in_shared_mode_device_filter_follows_only_matching_keys() -> None:
    follows = followed_devices(
        Settings.from_env({"TOPIC_MODE": "shared", "DEVICE_FILTER": "mine-"}))
    assert follows is not None
    keys = [b"mine-1", b"other-1", None, b"mine-2", b"\xff"]
    assert [follows(expected_device(SHARED_TOPIC, k)) for k in keys] == [
        True, False, False, True, False]


def test_without_a_filter_or_in_per_device_mode_every_key_is_followed() -> None:
    assert followed_devices(Settings.from_env({"TOPIC_MODE": "shared"})) is None
    assert followed_devices(Settings.from_env({"DEVICE_FILTER": "x"})) is None


class OneProvisioner(FakeProvisioner):
    """A FakeProvisioner as ``subscribe_existing`` opens one (its own, as a context manager),
    on a broker holding ``broker_topics``; ``made`` collects the instances."""

    broker_topics: set[str] = set()
    made: list["OneProvisioner"] = []

    def __init__(self, settings: Settings) -> None:
        super().__init__(self.broker_topics)
        self.made.append(self)

    async def __aenter__(self) -> "OneProvisioner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


BROKER = {"device-data-mine-1", "device-data-mine-2", "device-data-other-1", SHARED_TOPIC,
          DEAD_LETTER_TOPIC, "device-data-", "other"}


@pytest.mark.parametrize("env, expected", [
    ({}, ["device-data-mine-1", "device-data-mine-2", "device-data-other-1"]),
    ({"TOPIC_MODE": "shared"}, [SHARED_TOPIC]),
    ({"TOPIC_MODE": "both"},
     [SHARED_TOPIC, "device-data-mine-1", "device-data-mine-2", "device-data-other-1"]),
    ({"TOPIC_MODE": "both", "DEVICE_FILTER": "mine-"},
     [SHARED_TOPIC, "device-data-mine-1", "device-data-mine-2"]),
], ids=["per-device", "shared", "both", "both-filtered"])
async def test_the_first_subscription_holds_what_each_mode_reads_and_nothing_else(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[str]) -> None:
    monkeypatch.setattr("streams.subscription.TopicProvisioner", OneProvisioner)
    monkeypatch.setattr(OneProvisioner, "broker_topics", BROKER)
    monkeypatch.setattr(OneProvisioner, "made", [])
    channel = FakeChannel()
    settings = Settings.from_env(env)
    await subscribe_existing(channel, settings)  # type: ignore[arg-type]
    assert sorted(channel.names) == expected
    (provisioner,) = OneProvisioner.made
    assert provisioner.ensured == ([SHARED_TOPIC] if SHARED_TOPIC in expected else []), \
        "device-data is created if missing when the mode reads it, never otherwise"
    follows = followed_topics(settings)
    assert sorted(t for t in BROKER if follows(t)) == expected, \
        "the lag route and replay follow exactly the topics the worker subscribes to"


async def test_both_mode_keeps_device_data_and_discovers_new_device_topics() -> None:
    channel = FakeChannel()
    topics = FakeProvisioner({"device-data-mine-1", "device-data-other-1", DEAD_LETTER_TOPIC})
    settings = Settings.from_env({"TOPIC_MODE": "both", "DEVICE_FILTER": "mine-",
                                  "TOPIC_DISCOVERY_INTERVAL": "0.5"})
    task = asyncio.create_task(follow_device_topics(_app(), channel, topics, settings))
    try:
        await asyncio.sleep(0.1)
        assert sorted(channel.names) == [SHARED_TOPIC, "device-data-mine-1"]
        assert topics.ensured[0] == SHARED_TOPIC, "device-data created if missing"
        topics.topics |= {"device-data-mine-2", "device-data-other-2"}  # devices appear later
        await asyncio.sleep(0.6)
        assert not task.done(), "it keeps discovering device topics"
        assert sorted(channel.names) == [SHARED_TOPIC, "device-data-mine-1", "device-data-mine-2"]
    finally:
        task.cancel()


async def test_both_mode_still_discovers_device_topics_after_a_failed_round() -> None:
    class Flaky(FakeProvisioner):
        calls = 0

        async def ensure(self, names: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("broker restarting")
            await super().ensure(names)

    channel, topics = FakeChannel(), Flaky({"device-data-a"})
    settings = Settings.from_env({"TOPIC_MODE": "both", "TOPIC_DISCOVERY_INTERVAL": "0.5"})
    task = asyncio.create_task(follow_device_topics(_app(), channel, topics, settings))
    try:
        await asyncio.sleep(0.1)
        assert channel.names == []
        await asyncio.sleep(0.6)
        assert sorted(channel.names) == [SHARED_TOPIC, "device-data-a"]
    finally:
        task.cancel()


def test_in_both_mode_device_filter_follows_shared_keys_and_the_followed_topics_devices() -> None:
    settings = Settings.from_env({"TOPIC_MODE": "both", "DEVICE_FILTER": "mine-"})
    follows = followed_devices(settings)
    assert follows is not None
    keys = [b"mine-1", b"other-1", None, b"\xff"]
    assert [follows(expected_device(SHARED_TOPIC, k)) for k in keys] == [
        True, False, False, False]
    # the agent applies it to device-topic messages too: a followed topic's device passes,
    # whatever the key says
    assert follows(expected_device("device-data-mine-7", b"other-1"))
    assert followed_devices(Settings.from_env({"TOPIC_MODE": "both"})) is None


def test_in_both_mode_each_message_is_checked_against_its_own_topics_rule() -> None:
    now = datetime.now(timezone.utc)
    window = ValidationWindow.around(now, timedelta(days=90))

    def reading(device: str) -> dict[str, Any]:
        return {"device_id": device, "time": now.isoformat(), "metrics": {"t": 1}}

    batch = Batch(window=window)
    follows = followed_devices(Settings.from_env({"TOPIC_MODE": "both", "DEVICE_FILTER": "a"}))
    records = [
        record("device-data-a", b"zzz", reading("a")),  # the topic decides: valid
        record("device-data-a", b"a", reading("b")),  # another device on a's topic: invalid
        record(SHARED_TOPIC, b"a", reading("a")),  # the key decides: valid
        record(SHARED_TOPIC, b"a", reading("b")),  # not the key's device: invalid
        record(SHARED_TOPIC, b"b", reading("b")),  # a device DEVICE_FILTER refuses: skipped
    ]
    for r in records:
        assert batch.add(tp_of(r), [r], 0, 1000, follows) == 1
    assert [device for device, times in batch.event_times for _ in times] == ["a", "a"]
    assert len(batch.points) == 2 and len(batch.dead_letters) == 2
    assert len(batch.records) == 4, "the filtered message is acked, not validated"


def _add(batch: Batch, topic: str, key: bytes | None, value: Any) -> list[str]:
    """The device of each valid reading ``batch`` takes from one message."""
    before = len(batch.event_times)
    r = record(topic, key, value, offset=7)
    assert batch.add(tp_of(r), [r], 0, 1000, None) == 1
    return [device for device, times in batch.event_times[before:] for _ in times]


def test_the_agent_dead_letters_a_shared_topic_reading_whose_device_is_not_the_key() -> None:
    now = datetime.now(timezone.utc)
    window = ValidationWindow.around(now, timedelta(days=90))

    def reading(device: str) -> dict[str, Any]:
        return {"device_id": device, "time": now.isoformat(), "metrics": {"t": 1}}

    batch = Batch(window=window)
    assert _add(batch, SHARED_TOPIC, b"a", [reading("a")]) == ["a"]
    assert _add(batch, SHARED_TOPIC, b"a", [reading("a"), reading("b")]) == ["a"]
    assert _add(batch, SHARED_TOPIC, None, reading("a")) == []
    assert _add(batch, "device-data-a", b"b", reading("a")) == ["a"], \
        "per-device: the topic decides, as before"
    errors = [orjson.loads(d.value)["error"] for d in batch.dead_letters]
    assert len(errors) == 2 and all("does not match" in e for e in errors)
    wrong_topic = Batch(window=window)
    _add(wrong_topic, "device-data-a", b"a", reading("b"))
    assert orjson.loads(wrong_topic.dead_letters[0].value)["error"] == errors[0], \
        "dead-lettered like a reading on another device's topic"


def test_kafka_tls_and_sasl_settings_reach_every_client() -> None:
    from streams.topics import broker_credentials, kafka_client_kwargs

    plain = Settings.from_env({})
    assert kafka_client_kwargs(plain)["security_protocol"] == "PLAINTEXT"
    assert broker_credentials(plain) is None
    secure = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                "KAFKA_SASL_USERNAME": "worker", "KAFKA_SASL_PASSWORD": "pw"})
    kwargs = kafka_client_kwargs(secure)
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"], kwargs["sasl_plain_username"],
            kwargs["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", "worker", "pw")
    assert type(kwargs["security_protocol"]) is str and type(kwargs["sasl_mechanism"]) is str
    assert kwargs["ssl_context"] is not None
    sasl_only = kafka_client_kwargs(
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}))
    assert "ssl_context" not in sasl_only and sasl_only["sasl_mechanism"] == "PLAIN"
    credentials = broker_credentials(secure)
    assert (credentials.username, credentials.mechanism.value) == ("worker", "SCRAM-SHA-512")

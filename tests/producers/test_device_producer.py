"""DeviceProducer without a network: an in-memory Kafka client records what it would send."""
from __future__ import annotations

import asyncio
import gc
import tracemalloc
from dataclasses import replace
from datetime import datetime

import pytest

from producers import (
    DeliveryError,
    DeliveryTimeout,
    DeviceProducer,
    InvalidReadingError,
    ProducerConfig,
)
from streams.settings import ConfigError, Settings, TopicMode
from tests.producers.helpers import FakeKafka, reading

SETTINGS = Settings.from_env({})
SHARED = replace(SETTINGS, topics=replace(SETTINGS.topics, mode=TopicMode.SHARED))


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    return FakeKafka().install(monkeypatch)


def config(**changes: object) -> ProducerConfig:
    return ProducerConfig.from_settings(SETTINGS, **changes)


async def test_readings_of_one_device_are_batched_into_array_messages_by_count(kafka) -> None:
    async with DeviceProducer(SETTINGS, config(max_batch_readings=3, linger=60)) as producer:
        await producer.send_many(reading("d1", i, x=i) for i in range(7))
        await producer.flush()
    assert [len(s.readings) for s in kafka.sent] == [3, 3, 1]
    assert all(s.value.startswith(b"[") for s in kafka.sent[:2])
    assert kafka.sent[2].value.startswith(b"{"), "a lone reading is sent as an object"
    assert [r["metrics"]["x"] for r in kafka.readings_of("d1")] == list(range(7)), "order kept"


async def test_a_message_never_grows_past_max_message_bytes(kafka) -> None:
    limit = 2_000
    async with DeviceProducer(SETTINGS, config(max_message_bytes=limit, linger=60)) as producer:
        await producer.send_many(reading("d1", i, **{f"m{j}": j for j in range(5)})
                                 for i in range(100))
    assert len(kafka.sent) > 1
    assert all(len(s.value) <= limit for s in kafka.sent)
    assert len(kafka.readings_of("d1")) == 100


async def test_readings_wait_at_most_the_linger_time_without_flush(kafka) -> None:
    async with DeviceProducer(SETTINGS, config(linger=0.05)) as producer:
        await producer.send("d1", reading("d1")["time"], {"t": 1})
        await producer.send("d1", reading("d1", 1)["time"], {"t": 2})
        assert kafka.sent == [], "batched while the linger time runs"
        await asyncio.sleep(0.3)
        assert len(kafka.sent) == 1 and len(kafka.sent[0].readings) == 2


async def test_each_device_publishes_to_its_own_topic_keyed_by_its_id(kafka) -> None:
    async with DeviceProducer(SETTINGS) as producer:
        await producer.send_many([reading("d1"), reading("d2"), reading("d1", 1)])
    assert sorted((s.topic, s.key, len(s.readings)) for s in kafka.sent) == [
        ("device-data-d1", b"d1", 2), ("device-data-d2", b"d2", 1)]
    assert kafka.created == ["device-data-d1", "device-data-d2"], "provisioned on first use"


async def test_shared_mode_publishes_every_device_to_device_data_keyed_by_its_id(kafka) -> None:
    async with DeviceProducer(SHARED) as producer:
        await producer.send_many([reading("d1"), reading("d2"), reading("d1", 1)])
    assert sorted((s.topic, s.key, len(s.readings)) for s in kafka.sent) == [
        ("device-data", b"d1", 2), ("device-data", b"d2", 1)]
    assert all(r["device_id"] == s.key.decode() for s in kafka.sent for r in s.readings)
    assert kafka.created == ["device-data"]


async def test_topics_are_provisioned_once_per_device(kafka) -> None:
    async with DeviceProducer(SETTINGS, config(max_batch_readings=1)) as producer:
        for i in range(5):
            await producer.send_many([reading("d1", i), reading("d2", i)])
    assert kafka.created == ["device-data-d1", "device-data-d2"]


async def test_the_metadata_of_new_topics_is_asked_for_once_each_and_together(kafka) -> None:
    async with DeviceProducer(SETTINGS, config(max_batch_readings=1)) as producer:
        await producer.send_many(reading(f"d{i}", 0) for i in range(100))
        asked_by_the_first_call = sorted(kafka.metadata_asked)
        await producer.send_many(reading(f"d{i}", 1) for i in range(101))
    assert asked_by_the_first_call == sorted(f"device-data-d{i}" for i in range(100))
    assert kafka.metadata_asked[100:] == ["device-data-d100"], "known topics are not asked again"


async def test_an_invalid_reading_is_refused_locally_and_nothing_of_the_call_is_sent(kafka) -> None:
    async with DeviceProducer(SETTINGS) as producer:
        with pytest.raises(InvalidReadingError) as refused:
            await producer.send_many([
                reading("d1"),
                {"device_id": "d1", "time": reading("d1")["time"], "metrics": {"t": "hot"}},
                reading("d1", 1),
                {"device_id": "d1", "metrics": {"t": 1}},
            ])
        await producer.flush()
    assert [i for i, _ in refused.value.errors] == [1, 3], "each invalid reading, by index"
    assert "metrics" in refused.value.errors[0][1] and "time" in refused.value.errors[1][1]
    assert kafka.sent == [] and kafka.created == [], "nothing sent, no topic created"


@pytest.mark.parametrize("settings", [SETTINGS, SHARED], ids=["per-device", "shared"])
@pytest.mark.parametrize("bad_id", ["", "a b", "x" * 129, "é", "../etc", "a/b"])
async def test_invalid_device_ids_never_reach_the_broker(kafka, settings, bad_id) -> None:
    async with DeviceProducer(settings) as producer:
        with pytest.raises(InvalidReadingError, match="device_id"):
            await producer.send(bad_id, reading("d")["time"], {"t": 1})
    assert kafka.sent == [] and kafka.created == []


@pytest.mark.parametrize("bad, why", [
    ({"t": float("nan")}, "finite"),
    ({}, "metrics"),
    ({"1abc": 1}, "name"),
    ([("t", 1)], "metrics"),
])
async def test_send_refuses_what_the_agent_would_dead_letter(kafka, bad, why) -> None:
    async with DeviceProducer(SETTINGS) as producer:
        with pytest.raises(InvalidReadingError, match=why):
            await producer.send("d1", reading("d1")["time"], bad)
        with pytest.raises(InvalidReadingError, match="time zone"):
            await producer.send("d1", datetime(2026, 1, 1), {"t": 1})
        with pytest.raises(InvalidReadingError, match="future"):
            await producer.send("d1", reading("d1")["time"] + 3600_000, {"t": 1})
    assert kafka.sent == []


async def test_flush_reports_each_failed_message_with_device_and_reason(kafka) -> None:
    kafka.fail["device-data-d2"] = ConnectionResetError("broker went away")
    kafka.fail["device-data-d3"] = ValueError("record too large")
    async with DeviceProducer(SETTINGS) as producer:
        await producer.send_many([reading("d1"), reading("d2"), reading("d2", 1), reading("d3")])
        with pytest.raises(DeliveryError) as failed:
            await producer.flush()
        await producer.flush()  # each failure is reported once
    failures = {f.device_id: f for f in failed.value.failures}
    assert set(failures) == {"d2", "d3"}
    assert failures["d2"].readings == 2 and "broker went away" in str(failures["d2"])
    assert failures["d3"].topic == "device-data-d3" and "record too large" in str(failures["d3"])
    assert "2 message(s) with 3 reading(s) not delivered" in str(failed.value)


async def test_a_message_not_acknowledged_in_time_fails_with_a_clear_timeout(monkeypatch) -> None:
    kafka = FakeKafka(auto_ack=False).install(monkeypatch)
    async with DeviceProducer(SETTINGS, config(delivery_timeout=0.2)) as producer:
        await producer.send_many([reading("d1")])
        started = asyncio.get_running_loop().time()
        with pytest.raises(DeliveryError) as failed:
            await producer.flush()
        waited = asyncio.get_running_loop().time() - started
        kafka.ack_all()
    assert 0.15 < waited < 2, "flush waits for the delivery timeout, not longer"
    (failure,) = failed.value.failures
    assert isinstance(failure.error, DeliveryTimeout)
    assert "not acknowledged by the broker within 0.2s" in str(failure)


async def test_stop_ends_at_the_deadline_even_when_the_loop_cancelled_every_task(
        monkeypatch) -> None:
    # What asyncio.run does to the tasks left when its main coroutine ends.
    FakeKafka(auto_ack=False).install(monkeypatch)
    producer = DeviceProducer(SETTINGS, config(delivery_timeout=0.2))
    await producer.start()
    await producer.send_many([reading("d1")], wait=False)
    producer._expiry_task.cancel()
    failures = await asyncio.wait_for(producer.stop(), timeout=2)
    assert [type(f.error) for f in failures] == [DeliveryTimeout]


async def test_acknowledged_messages_leave_no_deadline_behind(kafka) -> None:
    async with DeviceProducer(SETTINGS, config(max_batch_readings=1, delivery_timeout=0.5)
                              ) as producer:
        await producer.send_many(reading("d1", i) for i in range(50))
        await producer.flush()
        await asyncio.sleep(0.2)  # a few rounds of the deadline watcher
        assert not producer._deadlines, "a long stream of messages would grow it without end"
    assert len(kafka.sent) == 50


async def test_shared_mode_keeps_nothing_per_device_after_flush(kafka) -> None:
    devices = 10_000
    async with DeviceProducer(SHARED, config(linger=60)) as producer:
        await producer.send_many([reading("warm-up")])
        await producer.flush()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for start in range(0, devices, 1000):
                await producer.send_many(reading(f"d{i}") for i in range(start, start + 1000))
            assert len(producer._buffers) == devices, "a message being filled per device"
            await producer.flush()
            assert len(kafka.sent) == devices + 1
            kafka.sent.clear()  # the fake broker's record of them
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert not producer._buffers and not producer._unsettled and not producer._deadlines
        assert producer._tracked == {"device-data"}
    # Emptied dicts and sets kept their largest tables, and acknowledged messages waited for
    # the deadline watcher: 0.75 MB (75 bytes per device of the burst) stayed after flush.
    assert held < 64 * 1024, f"{held} bytes ({held / devices:.1f} per device) kept after flush"


async def test_per_device_mode_still_provisions_each_topic_once_across_flushes(kafka) -> None:
    async with DeviceProducer(SETTINGS) as producer:
        for i in range(3):
            await producer.send_many([reading("d1", i), reading("d2", i)])
            await producer.flush()
    assert kafka.created == ["device-data-d1", "device-data-d2"]
    assert sorted(kafka.metadata_asked) == ["device-data-d1", "device-data-d2"]


async def test_send_waits_when_the_buffer_is_full_and_never_holds_more(monkeypatch) -> None:
    kafka = FakeKafka(auto_ack=False).install(monkeypatch)
    bound = 4_000
    async with DeviceProducer(SETTINGS, config(buffer_bytes=bound, max_batch_readings=5,
                                               linger=60)) as producer:
        async def send_all() -> None:
            for i in range(200):
                await producer.send_many([reading(f"d{i % 7}", i)])
                assert producer.buffered_bytes <= bound

        sender = asyncio.create_task(send_all())
        await asyncio.sleep(0.2)
        assert not sender.done(), "send waits while the broker acknowledges nothing"
        assert 0 < producer.buffered_bytes <= bound
        while not sender.done():  # the broker catches up bit by bit
            kafka.ack_all()
            await asyncio.sleep(0.01)
        await sender
        kafka.auto_ack = True
        kafka.ack_all()
        await producer.flush()
    assert sum(len(s.readings) for s in kafka.sent) == 200


async def test_wait_true_returns_after_the_acknowledgement_and_reports_its_own_failures(
    kafka,
) -> None:
    kafka.fail["device-data-bad"] = ConnectionResetError("gone")
    async with DeviceProducer(SETTINGS, config(linger=60)) as producer:
        assert await producer.send_many([reading("d1"), reading("d2")], wait=True) == 2
        assert len(kafka.sent) == 2 and all(s.future.done() for s in kafka.sent), \
            "published at once, not after the linger time"
        with pytest.raises(DeliveryError) as failed:
            await producer.send_many([reading("bad")], wait=True)
        assert [f.device_id for f in failed.value.failures] == ["bad"]
        await producer.flush()  # the caller already got that failure: not reported again


async def test_compression_idempotence_and_mode_come_from_the_settings(kafka) -> None:
    settings = Settings.from_env({"PRODUCER_COMPRESSION": "lz4",
                                  "KAFKA_IDEMPOTENT_PRODUCER": "true",
                                  "PRODUCER_DELIVERY_TIMEOUT": "7"})
    async with DeviceProducer(settings):
        pass
    assert kafka.producer_kwargs["compression_type"] == "lz4"
    assert kafka.producer_kwargs["enable_idempotence"] is True
    assert kafka.producer_kwargs["acks"] == "all"
    assert kafka.producer_kwargs["request_timeout_ms"] == 7000
    async with DeviceProducer(SETTINGS):
        pass
    assert kafka.producer_kwargs["compression_type"] == "snappy", "snappy by default"
    assert kafka.producer_kwargs["enable_idempotence"] is False


def test_topic_mode_both_is_refused_when_the_producer_is_made_saying_what_to_set(kafka) -> None:
    settings = Settings.from_env({"TOPIC_MODE": "both"})
    with pytest.raises(ConfigError) as refused:
        DeviceProducer(settings)
    assert str(refused.value) == (
        "TOPIC_MODE=both is a worker mode for moving from per-device topics to shared; a "
        "producer publishes to one: set per-device or shared")
    assert kafka.producer_kwargs == {}, "no Kafka client was made"


def test_producer_config_refuses_unknown_codecs_and_oversized_messages() -> None:
    with pytest.raises(ValueError, match="compression"):
        ProducerConfig(compression="brotli")
    with pytest.raises(ValueError, match="max_message_bytes"):
        ProducerConfig(max_message_bytes=2 * 1024 * 1024)
    with pytest.raises(TypeError, match="unknown"):
        ProducerConfig.from_settings(SETTINGS, max_in_flight=3)


async def test_sending_before_start_or_after_stop_is_an_error(kafka) -> None:
    producer = DeviceProducer(SETTINGS)
    with pytest.raises(RuntimeError, match="not started"):
        await producer.send_many([reading("d1")])
    await producer.start()
    await producer.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await producer.send_many([reading("d1")])

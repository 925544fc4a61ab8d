"""DeviceProducer against real brokers: the local stack's, and private ones a test may kill."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from producers import (
    BrokerUnavailable,
    DeliveryError,
    DeviceProducer,
    InvalidReadingError,
    ProducerConfig,
    ProducerStartError,
)
from streams.settings import Settings, TopicMode
from streams.topics import SHARED_TOPIC, InvalidDeviceId, device_topic
from tests.producers.helpers import reading
from tests.stack import SETTINGS, fleet

pytestmark = pytest.mark.integration


async def consume(topics: list[str], *, brokers: str = SETTINGS.kafka.brokers,
                  keys: set[bytes] | None = None, expect: int,
                  timeout: float = 15.0) -> list[Any]:
    """Messages on ``topics`` (only ``keys`` when given), until ``expect`` of them came."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=brokers, group_id=None,
                                auto_offset_reset="earliest", fetch_max_bytes=8 << 20)
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < expect and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                found += [m for m in messages if keys is None or m.key in keys]
    finally:
        await consumer.stop()
    return found


def values(messages: list[Any]) -> list[list[dict[str, Any]]]:
    return [v if isinstance(v := orjson.loads(m.value), list) else [v] for m in messages]


@pytest.mark.parametrize("compression", ["snappy", "lz4", "zstd", "gzip", None])
async def test_readings_arrive_as_json_arrays_of_one_device_keyed_by_its_id(
    stack, compression,
) -> None:
    devices, _ = fleet("prod-batch-", 2)
    config = ProducerConfig.from_settings(SETTINGS, max_batch_readings=10, linger=60,
                                          compression=compression)
    async with DeviceProducer(SETTINGS, config) as producer:
        await producer.send_many(reading(d, i, x=i) for i in range(25) for d in devices)
        await producer.flush()
    messages = await consume([device_topic(d) for d in devices], expect=6)
    assert sorted(len(v) for v in values(messages)) == [5, 5, 10, 10, 10, 10]
    for message, batch in zip(messages, values(messages)):
        assert message.topic == device_topic(message.key.decode())
        assert {r["device_id"] for r in batch} == {message.key.decode()}
        assert len({m.partition for m in messages if m.key == message.key}) == 1


async def test_device_topics_are_created_with_the_configured_partitions_and_configs(stack) -> None:
    (device,), _ = fleet("prod-topic-", 1)
    settings = replace(SETTINGS, topics=replace(SETTINGS.topics, partitions=3))
    async with DeviceProducer(settings) as producer:
        await producer.send(device, reading(device)["time"], {"t": 1}, wait=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=SETTINGS.kafka.brokers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([device_topic(device)])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, device_topic(device))])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3
    entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
    assert entries["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert entries["compression.type"] == "producer"


async def test_prepare_creates_every_device_topic_and_learns_its_partitions(stack) -> None:
    devices, _ = fleet("prod-prepare-", 50)
    async with DeviceProducer(SETTINGS) as producer:
        with pytest.raises(InvalidDeviceId):
            await producer.prepare([*devices, "no spaces allowed"])
        await producer.prepare(devices)
        cluster = producer._producer.client.cluster
        known = {d: cluster.partitions_for_topic(device_topic(d)) for d in devices}
    admin = AIOKafkaAdminClient(bootstrap_servers=SETTINGS.kafka.brokers)
    await admin.start()
    try:
        described = await admin.describe_topics([device_topic(d) for d in devices])
    finally:
        await admin.close()
    expected = set(range(SETTINGS.topics.partitions))
    assert all(partitions == expected for partitions in known.values())
    assert [len(t["partitions"]) for t in described] == [len(expected)] * len(devices)


async def test_shared_mode_publishes_to_device_data_keyed_by_device(stack) -> None:
    devices, _ = fleet("prod-shared-", 3)
    shared = replace(SETTINGS, topics=replace(SETTINGS.topics, mode=TopicMode.SHARED))
    async with DeviceProducer(shared) as producer:
        await producer.send_many([reading(d, i) for d in devices for i in range(4)], wait=True)
    messages = await consume([SHARED_TOPIC], keys={d.encode() for d in devices}, expect=3)
    assert sorted(m.key.decode() for m in messages) == sorted(devices)
    assert all({r["device_id"] for r in v} == {m.key.decode()} and len(v) == 4
               for m, v in zip(messages, values(messages)))


async def test_a_refused_reading_never_reaches_the_broker(stack) -> None:
    (device,), _ = fleet("prod-refused-", 1)
    async with DeviceProducer(SETTINGS) as producer:
        with pytest.raises(InvalidReadingError):
            await producer.send_many([reading(device), {"device_id": device, "metrics": {}}])
    admin = AIOKafkaAdminClient(bootstrap_servers=SETTINGS.kafka.brokers)
    await admin.start()
    try:
        assert device_topic(device) not in await admin.list_topics(), "no topic, no message"
    finally:
        await admin.close()


async def test_flush_reports_each_message_lost_when_the_broker_dies(private_broker) -> None:
    settings = private_broker.settings()
    config = ProducerConfig.from_settings(settings, delivery_timeout=3.0, linger=60)
    devices = ["a", "b", "c"]
    async with DeviceProducer(settings, config) as producer:
        await producer.send_many([reading(d) for d in devices], wait=True)  # topics exist
        await producer.send_many([reading(d, i) for d in devices for i in range(1, 4)])
        private_broker.kill()
        started = time.monotonic()
        with pytest.raises(DeliveryError) as failed:
            await producer.flush()
        waited = time.monotonic() - started
    assert waited < 3.0 + 2.0, "retries end at the delivery timeout"
    assert sorted(f.device_id for f in failed.value.failures) == devices
    assert all(f.readings == 3 for f in failed.value.failures)
    assert "3 message(s) with 9 reading(s) not delivered" in str(failed.value)


async def test_send_waits_while_the_broker_stalls_and_the_buffer_stays_bounded(
    private_broker,
) -> None:
    settings = private_broker.settings()
    bound = 64 * 1024
    config = ProducerConfig.from_settings(settings, buffer_bytes=bound, max_batch_readings=20,
                                          delivery_timeout=20.0)
    sent = 0
    peak = 0
    async with DeviceProducer(settings, config) as producer:
        await producer.send_many([reading(f"dev{i}") for i in range(10)], wait=True)

        async def send_all() -> None:
            nonlocal sent, peak
            for i in range(3_000):
                await producer.send_many([reading(f"dev{i % 10}", i, a=i, b=i * 2)])
                sent += 1
                peak = max(peak, producer.buffered_bytes)

        private_broker.pause()
        sender = asyncio.create_task(send_all())
        await asyncio.sleep(1.0)
        stalled_at = sent
        await asyncio.sleep(1.0)
        assert not sender.done() and sent == stalled_at, "send waits while the broker stalls"
        assert 0 < stalled_at < 3_000
        private_broker.resume()
        await asyncio.wait_for(sender, 20)
        await producer.flush()
        delivered = producer.readings_delivered
    assert peak <= bound, f"held {peak} bytes, bound {bound}"
    assert delivered == 3_000 + 10


async def test_an_unreachable_broker_fails_start_after_bounded_retries(stack) -> None:
    from tests.stack import free_port

    settings = Settings.from_env({"KAFKA_BROKERS": f"127.0.0.1:{free_port()}",
                                  "PRODUCER_DELIVERY_TIMEOUT": "1.5"})
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"no Kafka broker reachable at 127\.0\.0\.1:\d+ "
                                                 r"after \d+ attempt\(s\)"):
        async with DeviceProducer(settings):
            pass
    assert time.monotonic() - started < 1.5 + 1.0


async def test_the_local_broker_refusing_idempotence_gives_a_clear_error(stack) -> None:
    settings = Settings.from_env({"KAFKA_IDEMPOTENT_PRODUCER": "true"})
    with pytest.raises(ProducerStartError, match="KAFKA_IDEMPOTENT_PRODUCER=false"):
        async with DeviceProducer(settings):
            pass

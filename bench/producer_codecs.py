"""Producer throughput per compression codec: ``python -m bench.producer_codecs --help``.

Publishes simulated readings through DeviceProducer as fast as it accepts them and waits for
the broker's acknowledgement of all of them, once per codec; prints readings/s, points/s and
the compressed size of a typical message. Point it at a broker nobody else uses (it creates
one topic per device, or uses ``device-data`` with ``--topic-mode shared``).
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Callable

import cramjam
import orjson

from producers.device_producer import DeviceProducer, ProducerConfig
from producers.simulator import Fleet, FleetConfig
from streams.settings import Compression, Settings, TopicMode
from streams.topics import PUBLISHING_MODES

CODECS = ["none", "snappy", "lz4", "zstd", "gzip"]  # Compression values, in bench order


def _compressed_size(codec: str, value: bytes) -> int:
    if codec == "none":
        return len(value)
    codecs: dict[str, Callable[[bytes], cramjam.Buffer]] = {
        "snappy": cramjam.snappy.compress_raw, "lz4": cramjam.lz4.compress_block,
        "zstd": cramjam.zstd.compress, "gzip": cramjam.gzip.compress}
    compress = codecs[codec]
    return len(bytes(compress(value)))


async def bench(settings: Settings, codec: str, readings: int, devices: int, metrics: int,
                per_message: int, prefix: str) -> tuple[float, int, int]:
    fleet = Fleet(FleetConfig(devices=devices, metrics=metrics, prefix=prefix, seed=1))
    config = ProducerConfig.from_settings(
        settings, compression=Compression(codec).codec,
        max_batch_readings=per_message)
    batch = 1000
    # Generated before the clock starts: the figure is the producer's cost, not the fleet's.
    calls = [fleet.next_readings(batch) for _ in range(readings // batch)]
    async with DeviceProducer(settings, config) as producer:
        # Provision the topics first: creation is a one-time cost, not throughput.
        await producer.send_many(fleet.next_readings(devices), wait=True)
        started = time.perf_counter()
        for call in calls:
            await producer.send_many(call)
        await producer.flush()
        elapsed = time.perf_counter() - started
    sample = b"[" + b",".join(orjson.dumps(r) for r in calls[0][:per_message]) + b"]"
    return len(calls) * batch / elapsed, len(sample), _compressed_size(codec, sample)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--topic-mode", choices=[m.value for m in PUBLISHING_MODES],
                        default=TopicMode.PER_DEVICE.value)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    settings = Settings.from_env({"KAFKA_BROKERS": args.brokers, "TOPIC_MODE": args.topic_mode})
    print(f"{args.readings} readings x {args.metrics} metrics, {args.devices} devices, "
          f"up to {args.per_message} readings/message, {args.topic_mode} topics, "
          f"broker {args.brokers}")
    for round_ in range(args.rounds):
        for codec in args.codecs.split(","):
            rate, raw, size = await bench(settings, codec, args.readings, args.devices,
                                          args.metrics, args.per_message,
                                          f"bench-{codec}-{round_}-")
            print(f"{codec:>6}: {rate:>9,.0f} readings/s  {rate * args.metrics:>10,.0f} points/s"
                  f"  one message of {args.per_message} readings: {raw} B -> {size} B "
                  f"({size / raw:.0%})")


if __name__ == "__main__":
    asyncio.run(main())

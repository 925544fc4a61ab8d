"""What many partitions cost a consumer: ``python -m bench.idle_partitions --help``.

For each count N, creates N topics of 10 partitions (as per-device topics are), starts one
group consumer (aiokafka, the client Faust's workers use) subscribed to all of them, and
measures the time to join and get the assignment, then the CPU the consumer burns over
10 s with no data at all. Point it at a broker of its own: it creates N topics per round.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 10


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(broker: str, topics: int, idle_seconds: float) -> str:
    prefix = f"pbench-{uuid.uuid4().hex[:6]}-"
    names = [f"{prefix}{i}" for i in range(topics)]
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=120_000)
    await admin.start()
    try:
        started = time.perf_counter()
        for i in range(0, topics, 100):
            await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names[i:i + 100]])
        created = time.perf_counter() - started
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(*names, bootstrap_servers=broker, group_id=prefix + "group",
                                session_timeout_ms=6000, heartbeat_interval_ms=600,
                                auto_offset_reset="earliest", request_timeout_ms=120_000)
    started = time.perf_counter()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        joined = time.perf_counter() - started
        cpu, started = _cpu_seconds(), time.perf_counter()
        while time.perf_counter() - started < idle_seconds:
            await consumer.getmany(timeout_ms=500)
        idle = (_cpu_seconds() - cpu) / (time.perf_counter() - started)
    finally:
        await consumer.stop()
    return (f"{topics:>6} topics x {PARTITIONS} = {topics * PARTITIONS:>6} partitions: "
            f"created in {created:5.1f} s, joined in {joined:4.1f} s, "
            f"idle consumer CPU {idle:4.0%} of a core")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True, help="a broker of its own (host:port)")
    parser.add_argument("--topics", default="1,40,100,200,400,1000",
                        help="comma-separated topic counts (10 partitions each)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    for count in (int(c) for c in args.topics.split(",")):
        print(await measure(args.brokers, count, args.idle_seconds), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

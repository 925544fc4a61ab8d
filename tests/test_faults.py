"""Faults on the real local stack: nothing lost, nothing duplicated, aggregates exact."""
from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streams.settings import Settings, TopicMode
from streams.topics import SHARED_TOPIC, TopicProvisioner, device_topic
from tests.stack import (
    SETTINGS,
    BrokerProxy,
    PrivateBroker,
    PrivateDatabase,
    RawProducer,
    Stream,
    assert_exactly_once,
    committed_offsets,
    count_rows,
    create_topics,
    db_connect,
    fleet,
    read_dead_letters,
    rows_at_least,
    stored_points,
    wait_for,
)
from tests.web.worker_web import get
from bench.worker_process import disjoint_shares

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POISON = 6.66e66  # the value the database is made to refuse


async def test_three_sigkills_during_a_stream_lose_and_duplicate_nothing(start_worker) -> None:
    devices, only = fleet("sigkill-", 10)
    # A restarted worker takes about 13 s to get its partitions back (the killed member's
    # session must expire first), so the stream lasts long enough for three kills.
    stream = Stream(devices, readings_per_s=1000, seconds=60, metrics=2)  # 60,000 readings
    publishing = asyncio.create_task(stream.run())
    env = {"DEVICE_FILTER": only, "SINK_BATCH_POINTS": "2000"}
    worker = start_worker("sigkill-0", **env)
    group = worker.env["APP_ID"]
    for kill in range(1, 4):
        rows = await count_rows(devices)
        await wait_for(lambda: rows_at_least(devices, rows + 3000), 90, "rows to flow")
        assert not publishing.done(), f"kill {kill} would come after the stream ended"
        worker.kill()
        worker = start_worker(f"sigkill-{kill}", APP_ID=group, **env)
    await publishing
    assert stream.points >= 50_000 and stream.conflicts >= 1000
    await assert_exactly_once(stream)


async def test_postgres_stopped_for_30_seconds_mid_stream_loses_nothing(
        private_database: PrivateDatabase, start_worker) -> None:
    # 20 partitions over the two writer lanes, each retrying through the outage.
    settings, postgres = private_database.settings, private_database.postgres
    devices, only = fleet("pgdown-", 20)
    stream = Stream(devices, readings_per_s=500, seconds=50)
    publishing = asyncio.create_task(stream.run())
    worker = start_worker("pgdown", DEVICE_FILTER=only, **private_database.worker_env())
    await wait_for(lambda: rows_at_least(devices, 1000, settings), 90, "rows to flow")
    outage_seen = unready_seen = False
    await asyncio.to_thread(postgres.stop)  # fast shutdown
    # Down for 30 s, and on until the worker has reported it (its database sample runs
    # every 5 s, spaced further after a slow round; slower still beside other tests).
    stop, latest = time.monotonic() + 30, time.monotonic() + 90
    while time.monotonic() < stop or (
            not (outage_seen and unready_seen) and time.monotonic() < latest):
        _, state = await get(worker, "/pipeline/db")
        outage_seen = outage_seen or state.get("available") is False
        status, ready = await get(worker, "/health/ready")
        unready_seen = unready_seen or (status == 503 and "database" in ready["failing"])
        await asyncio.sleep(2)
    assert worker.process.poll() is None, "the worker must survive the outage"
    await asyncio.to_thread(postgres.start)
    await private_database.pgbouncer.ready()  # as stack/up.sh waited for the stack's
    await publishing
    assert stream.conflicts >= 400
    await assert_exactly_once(stream, settings=settings)
    assert outage_seen, "/pipeline/db never reported the database unavailable"
    assert unready_seen, "/health/ready never failed its database check"

    async def ready_again() -> bool:  # at the next database sample (every 5 s)
        return (await get(worker, "/health/ready"))[0] == 200
    await wait_for(ready_again, 20, "/health/ready to pass again after the outage")


async def test_pgbouncer_restarted_mid_stream_loses_nothing(
        private_database: PrivateDatabase, start_worker) -> None:
    settings, pgbouncer = private_database.settings, private_database.pgbouncer
    devices, only = fleet("pgbrestart-", 5)
    stream = Stream(devices, readings_per_s=500, seconds=30)
    publishing = asyncio.create_task(stream.run())
    worker = start_worker("pgbrestart", DEVICE_FILTER=only, **private_database.worker_env())
    await wait_for(lambda: rows_at_least(devices, 1000, settings), 90, "rows to flow")
    await asyncio.to_thread(pgbouncer.stop, signal.SIGINT)  # safe shutdown
    await asyncio.sleep(5)
    await pgbouncer.start()
    await publishing
    await assert_exactly_once(stream, settings=settings)
    assert worker.process.poll() is None


async def test_a_killed_worker_partitions_are_taken_over_by_the_other(start_worker) -> None:
    devices, only = fleet("takeover-", 8)
    stream = Stream(devices, readings_per_s=1000, seconds=40)
    publishing = asyncio.create_task(stream.run())
    first = start_worker("takeover-1", DEVICE_FILTER=only)
    second = start_worker("takeover-2", DEVICE_FILTER=only, APP_ID=first.env["APP_ID"])
    await wait_for(lambda: rows_at_least(devices, 5000), 120, "rows to flow")
    await asyncio.sleep(5)  # both hold partitions now
    first.kill()
    killed_at = time.monotonic()
    await publishing
    await assert_exactly_once(stream, timeout=120)
    took = time.monotonic() - killed_at
    print(f"takeover complete (all rows) {took:.1f}s after the kill")
    assert second.process.poll() is None


async def test_in_shared_mode_three_workers_split_device_data_and_a_sigkill_loses_nothing(
        start_worker) -> None:
    """Three workers of one group share device-data's partitions (so each device's readings
    go to one worker at a time); one is SIGKILLed mid-stream, and rows, aggregates and dead
    letters stay exact."""
    devices, only = fleet("shared-kill-", 30)
    stream = Stream(devices, readings_per_s=1000, seconds=45, topic_mode=TopicMode.SHARED)
    env = {"DEVICE_FILTER": only, "TOPIC_MODE": "shared", "SINK_BATCH_POINTS": "2000"}
    first = start_worker("shared-kill-1", **env)
    workers = [first] + [start_worker(f"shared-kill-{n}", APP_ID=first.env["APP_ID"], **env)
                         for n in (2, 3)]
    publishing = asyncio.create_task(stream.run())
    await wait_for(lambda: rows_at_least(devices, 5000), 120, "rows to flow")

    async def split_three_ways() -> bool:
        return await disjoint_shares(workers, SHARED_TOPIC) is not None
    await wait_for(split_three_ways, 60, "device-data's partitions split among the three")
    # Killed within a second of the group's first sync, a member once left Tansu's next
    # rebalance waiting for the leader, which was never told of it: the group settles first.
    await asyncio.sleep(5)
    assert not publishing.done(), "the kill would come after the stream ended"
    workers[1].kill()
    await publishing
    await assert_exactly_once(stream, timeout=150)
    assert workers[0].process.poll() is None and workers[2].process.poll() is None


async def _publish_one_each(settings: Settings, devices: list[str], metric: str) -> None:
    async with TopicProvisioner(settings) as topics:
        await topics.ensure(device_topic(d) for d in devices)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.brokers)
    await producer.start()
    try:
        for device in devices:
            reading = {"device_id": device, "time": int(time.time() * 1000) - 1000,
                       "metrics": {metric: 1.0}}
            await producer.send_and_wait(device_topic(device), orjson.dumps(reading),
                                         key=device.encode())
    finally:
        await producer.stop()


async def test_the_worker_goes_on_after_the_broker_restarts_with_its_data_gone(
    private_broker: PrivateBroker, start_worker,
) -> None:
    settings = private_broker.settings()
    devices, only = fleet("brokerdown-", 2)
    await asyncio.sleep(1)
    await _publish_one_each(settings, devices, "before")
    worker = start_worker("broker-restart", DEVICE_FILTER=only, **private_broker.worker_env())
    await wait_for(lambda: rows_at_least(devices, 2), 90, "rows before the restart")
    private_broker.kill()
    await private_broker.start()  # memory storage: every topic and committed offset is gone
    restarted = time.monotonic()
    await asyncio.sleep(1)
    await _publish_one_each(settings, devices, "after")
    await wait_for(lambda: rows_at_least(devices, 4), 90, "rows after the restart")
    print(f"consuming again {time.monotonic() - restarted:.1f}s after the broker restart")
    assert worker.process.poll() is None
    assert await count_rows(devices) == 4


Points = Counter[tuple[str, str, int, float]]  # (device, metric, epoch ms, value)


async def _publish_each(settings: Settings, devices: list[str], metric: str,
                        count: int) -> tuple[Points, dict[TopicPartition, int]]:
    """``count`` one-point readings per device (times a minute ago, one ms apart); the
    points they hold and, for each partition written, the offset after the last one."""
    async with TopicProvisioner(settings) as topics:
        await topics.ensure(device_topic(d) for d in devices)
    start_ms = int(time.time() * 1000) - 60_000
    points: Points = Counter()
    ends: dict[TopicPartition, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.brokers)
    await producer.start()
    try:
        for i in range(count):
            for device in devices:
                reading = {"device_id": device, "time": start_ms + i,
                           "metrics": {metric: float(i)}}
                sent = await producer.send_and_wait(device_topic(device), orjson.dumps(reading),
                                                    key=device.encode())
                points[device, metric, start_ms + i, float(i)] += 1
                tp = TopicPartition(sent.topic, sent.partition)
                ends[tp] = max(ends.get(tp, 0), sent.offset + 1)
    finally:
        await producer.stop()
    return points, ends


@pytest.mark.timeout(90)
async def test_the_worker_resumes_from_its_committed_offsets_after_the_broker_comes_back(
    proxied_broker: tuple[PrivateBroker, BrokerProxy], start_worker,
) -> None:
    """A broker that goes away for longer than the session timeout and comes back with its
    topics and committed offsets, as Kafka does: a proxy cuts every connection and turns
    new ones away while Tansu keeps its memory (a real restart of it would lose all)."""
    broker, proxy = proxied_broker
    settings = broker.settings()
    devices, only = fleet("brokerback-", 2)
    before, before_ends = await _publish_each(settings, devices, "before", 20)
    worker = start_worker("broker-back", DEVICE_FILTER=only, **broker.worker_env())
    group = worker.env["APP_ID"]

    async def committed_up_to(ends: dict[TopicPartition, int]) -> bool:
        committed = await committed_offsets(broker.address, group, list(ends))
        return all((committed.get(tp) or 0) >= end for tp, end in ends.items())

    await wait_for(lambda: rows_at_least(devices, before.total()), 45, "rows before the outage")
    await wait_for(lambda: committed_up_to(before_ends), 15, "the offsets of those committed")
    # Right before the outage: read, written or committed, or not, when the broker goes.
    tail, tail_ends = await _publish_each(settings, devices, "tail", 3)
    proxy.cut()
    cut_at = time.monotonic()
    read_at_cut = (await get(worker, "/pipeline/throughput"))[1].get("messages_total")
    session_timeout = float(worker.env["BROKER_SESSION_TIMEOUT"])
    await asyncio.sleep(session_timeout + 4)
    await broker.expire_sessions(group)  # as Kafka's coordinator would have by now
    assert worker.process.poll() is None, f"the worker died:\n{worker.log_tail()}"
    assert proxy.reset >= 1, "the outage cut no connection"
    assert proxy.turned_away >= 1, "the worker did not try to reconnect during the outage"
    proxy.restore()
    after, after_ends = await _publish_each(settings, devices, "after", 5)
    expected = before + tail + after
    ends = {**before_ends, **tail_ends, **after_ends}  # each later one is past the earlier
    assert all(end > before_ends[tp] for tp, end in ends.items())

    await wait_for(lambda: rows_at_least(devices, expected.total()), 40, "rows after the outage")
    back = time.monotonic() - cut_at
    await wait_for(lambda: committed_up_to(ends), 15, "the offsets of all committed")
    await asyncio.sleep(2)  # anything extra would show up now
    assert await count_rows(devices) == expected.total()
    stored = await stored_points(devices)
    missing, extra = expected - stored, stored - expected
    assert not missing and not extra, (
        f"missing {sorted(missing)[:3]} ({missing.total()}), extra {sorted(extra)[:3]} "
        f"({extra.total()})")
    # The same process went on from its committed offsets. What came after the last commit
    # before the outage (the tail, and the readings after it if the worker fetched them
    # before its group rebalanced) may be read twice, as the rebalance drops uncommitted
    # positions; the 40 before it never (the rows would not show it: the sink ignores a
    # point stored already) ...
    assert worker.process.poll() is None, f"the worker died:\n{worker.log_tail()}"
    status, throughput = await get(worker, "/pipeline/throughput")
    assert status == 200, throughput
    assert throughput["rows_written_total"] == expected.total()
    read, again = throughput["messages_total"], tail.total() + after.total()
    assert expected.total() <= read <= expected.total() + again, (
        f"{read} messages read, {expected.total()} published, of which {again} after the "
        "pre-outage commit: the worker did not resume from its committed offsets")
    # ... after its group rebalanced: it joined again and sought its committed offsets.
    log = worker.log_text()
    generations = [int(g) for g in re.findall(
        rf"Joined group '{re.escape(group)}' \(generation (-?\d+)\)", log)]
    assert len(generations) >= 2 and generations[-1] > generations[0], generations
    assert log.count("Seek stream partitions to committed offsets") >= 2
    print(f"all stored {back:.1f}s after the cut; messages read {read} "
          f"of {expected.total()} ({read_at_cut} when cut); proxy reset "
          f"{proxy.reset}, turned away {proxy.turned_away}")


async def test_readings_the_database_refuses_are_dead_lettered_with_its_reason(
    start_worker,
) -> None:
    (device,), only = fleet("refused-", 1)
    topic, key = device_topic(device), device.encode()
    constraint = "test_refuse_" + device.replace("-", "_")
    conn = await db_connect(SETTINGS.as_owner())  # a trigger on storage.readings
    try:
        # A permanent database error (check_violation) for one value no other test writes.
        # A trigger, not a CHECK constraint: TimescaleDB refuses new constraints on a
        # hypertable with compressed chunks.
        await conn.execute(f"""
            CREATE FUNCTION public.{constraint}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.value = {POISON!r} THEN
                    RAISE EXCEPTION 'value refused by {constraint}'
                        USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {constraint} BEFORE INSERT ON storage.readings
                FOR EACH ROW EXECUTE FUNCTION public.{constraint}();""")
        await create_topics([topic])
        start_worker("refused", DEVICE_FILTER=only)
        base = int(time.time() * 1000) - 60_000
        async with RawProducer() as producer:
            await producer.send(topic, key, {"device_id": device, "time": base,
                                             "metrics": {"t": 1.0}})
            _, offset = await producer.send(topic, key, [
                {"device_id": device, "time": base + 1, "metrics": {"t": 2.0}},
                {"device_id": device, "time": base + 2, "metrics": {"t": POISON, "h": 5.0}},
                {"device_id": device, "time": base + 3, "metrics": {"t": 3.0}},
            ])
            await producer.send(topic, key, {"device_id": device, "time": base + 4,
                                             "metrics": {"t": 4.0}})
        await wait_for(lambda: rows_at_least([device], 4), 90, "the other readings")
        letters = await read_dead_letters({topic}, 1)
    finally:
        await conn.execute(f"DROP TRIGGER IF EXISTS {constraint} ON storage.readings; "
                           f"DROP FUNCTION IF EXISTS public.{constraint}()")
        await conn.close()
    assert await count_rows([device]) == 4
    assert [(r["offset"], r["index"]) for r in letters] == [(offset, 1)]
    assert "refused by the database" in letters[0]["error"]
    assert constraint in letters[0]["error"]

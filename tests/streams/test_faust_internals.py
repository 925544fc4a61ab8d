"""Contract tests of streams.faust_internals against the real Faust and aiokafka classes:
linear commits, the configured fetch wait, the version check. The record feed's behaviours
(commits only up to the first record not acked, gaps not holding commits back, a
rebalance waiting for records handed over) are in test_record_feed.py."""
from __future__ import annotations

import asyncio
from importlib.metadata import version

import pytest
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from faust.types import TP

from streams.app import app, settings
from streams.faust_internals import Consumer, ConsumerThread, PromptTableManager


def test_the_app_consumes_through_the_fixed_consumer() -> None:
    assert isinstance(app.consumer, Consumer)
    assert isinstance(app.consumer._new_consumer_thread(), ConsumerThread)


def new_consumer() -> Consumer:
    """A consumer (not started) bound to the test's event loop."""
    async def unused(*args: object) -> None:
        raise AssertionError("not called in these tests")

    return Consumer(app.transport, callback=unused, on_partitions_revoked=unused,
                    on_partitions_assigned=unused, loop=asyncio.get_running_loop())


async def test_a_commit_sends_only_assigned_partitions_once_each() -> None:
    committed: list[dict] = []

    class AioConsumer:
        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition(f"t{i}", 0) for i in range(1000)}

        async def commit(self, offsets: dict) -> None:
            committed.append(offsets)

    thread = ConsumerThread(new_consumer(), loop=asyncio.get_running_loop())
    thread._consumer = AioConsumer()
    offsets = {TP(f"t{i}", 0): i for i in range(990, 1010)}  # t1000.. are not assigned
    assert await thread._commit(offsets) is True
    assert committed == [{TopicPartition(f"t{i}", 0): OffsetAndMetadata(i, "")
                          for i in range(990, 1000)}]
    assert set(thread.tp_last_committed_at) == {TP(f"t{i}", 0) for i in range(990, 1000)}


async def test_the_fetch_wait_comes_from_the_settings_not_faust_s_fixed_1500_ms() -> None:
    thread = ConsumerThread(new_consumer(), loop=asyncio.get_running_loop())
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == int(settings.kafka.fetch_max_wait * 1000) == 250


async def test_the_table_manager_registers_the_tables_at_start_without_sleeping(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.consumer, "assignment", set)  # not started: nothing assigned
    manager = PromptTableManager(app, loop=asyncio.get_running_loop())
    slept: list[float] = []
    recovery_started: list[bool] = []

    async def sleep(seconds: float, **kwargs: object) -> None:
        slept.append(seconds)

    async def start_recovery() -> None:
        recovery_started.append(True)

    manager.sleep = sleep  # type: ignore[method-assign]
    manager.recovery.start = start_recovery  # type: ignore[method-assign]
    await manager.on_start()
    assert slept == [] and recovery_started == [True]
    await asyncio.wait_for(manager.wait_until_tables_registered(), 1)
    assert isinstance(app.tables, PromptTableManager)


def test_the_installed_versions_are_the_tested_ones_and_others_are_refused() -> None:
    from streams.faust_internals import TESTED_VERSIONS, check_versions

    assert {name: version(name) for name in TESTED_VERSIONS} == TESTED_VERSIONS
    check_versions()
    newer = {**TESTED_VERSIONS, "faust-streaming": "0.16.0"}
    with pytest.raises(RuntimeError, match=r"installed: faust-streaming 0\.16\.0") as refused:
        check_versions(newer.__getitem__)
    assert "tested with faust-streaming 0.15.3" in str(refused.value)
    assert "aiokafka" not in str(refused.value).split("installed:")[1]

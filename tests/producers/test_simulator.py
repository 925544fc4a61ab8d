"""The simulated fleet: small flat memory per device, ids, clocks, values and run_fleet."""
from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections import defaultdict
from typing import Any

import pytest

from producers.simulator import MAX_CALL_READINGS, Fleet, FleetConfig, Progress, run_fleet


def traced_bytes(build: Any) -> tuple[Any, int]:
    """What ``build()`` returns and the bytes it still holds (tracemalloc: numpy's too)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("metrics", [1, 5])
def test_a_fleet_holds_two_arrays_and_nothing_else_per_device(metrics: int) -> None:
    devices = 200_000
    Fleet(FleetConfig(devices=1, metrics=metrics))  # warm-up: what a first fleet imports
    fleet, held = traced_bytes(lambda: Fleet(FleetConfig(devices=devices, metrics=metrics)))
    per_device = held / devices
    # A float64 per metric (the walks) and an int64 (the last time): 16 bytes at 1 metric,
    # 48 at 5. Ids in a list and values in dicts of lists took 250-450 bytes.
    assert per_device < 8 * (metrics + 1) + 1, f"{per_device:.1f} bytes per device"
    if metrics == 1:
        assert per_device < 40
    assert fleet.nbytes == devices * 8 * (metrics + 1)


def test_generating_readings_adds_nothing_per_device() -> None:
    devices = 50_000
    fleet = Fleet(FleetConfig(devices=devices, metrics=5, seed=3))

    def one_round() -> int:
        for _ in range(devices // 1000):
            fleet.next_readings(1000)  # each call's readings dropped, as a sender would
        return fleet._next

    done, held = traced_bytes(one_round)
    assert done == devices
    assert held < 64 * 1024, f"{held} bytes kept after a round over {devices} devices"


def test_device_ids_keep_their_format_and_come_round_robin() -> None:
    fleet = Fleet(FleetConfig(devices=3, metrics=2, prefix="sim-", seed=1))
    assert list(fleet.device_ids) == ["sim-00000", "sim-00001", "sim-00002"]
    assert [r["device_id"] for r in fleet.next_readings(7)] == \
        ["sim-00000", "sim-00001", "sim-00002"] * 2 + ["sim-00000"]
    assert fleet.next_reading()["device_id"] == "sim-00001"


def test_device_ids_are_made_from_the_index_for_any_fleet_size() -> None:
    fleet = Fleet(FleetConfig(devices=1_000_000, metrics=1, prefix="bench-"))
    ids = fleet.device_ids
    assert len(ids) == 1_000_000
    assert (ids[0], ids[99_999], ids[123_456], ids[-1]) == \
        ("bench-00000", "bench-99999", "bench-123456", "bench-999999")
    assert ids[3:6] == ["bench-00003", "bench-00004", "bench-00005"]
    assert "bench-00042" in ids
    with pytest.raises(IndexError):
        ids[1_000_000]
    fleet._next = 999_998  # the last devices, then round again
    assert [r["device_id"] for r in fleet.next_readings(3)] == \
        ["bench-999998", "bench-999999", "bench-00000"]


def test_readings_have_the_message_shape_with_plain_python_values() -> None:
    fleet = Fleet(FleetConfig(devices=4, metrics=3, seed=2))
    for reading in fleet.next_readings(10):
        assert list(reading) == ["device_id", "time", "metrics"]
        assert type(reading["time"]) is int
        metrics = reading["metrics"]
        assert isinstance(metrics, dict) and list(metrics) == ["metric_0", "metric_1", "metric_2"]
        for value in metrics.values():
            # float itself (not numpy's): the validator's fast path and orjson expect it.
            assert type(value) is float and round(value, 3) == value


@pytest.mark.parametrize("devices", [1, 3, 1000])
def test_each_device_keeps_a_strictly_increasing_clock_close_to_now(devices: int) -> None:
    fleet = Fleet(FleetConfig(devices=devices, metrics=2, seed=4))
    started = int(time.time() * 1000)
    times: dict[object, list[int]] = defaultdict(list)
    for size in [1, 2, 999, 5000, 7, 3000]:  # calls smaller and larger than the fleet
        for reading in fleet.next_readings(size):
            times[reading["device_id"]].append(reading["time"])  # type: ignore[arg-type]
    assert len(times) == devices
    count = sum(len(t) for t in times.values())
    assert count == 9009
    for stamps in times.values():
        assert all(a < b for a, b in zip(stamps, stamps[1:])), "strictly increasing"
        assert stamps[0] >= started
        # Ahead of the wall clock only by the readings it had within one millisecond.
        assert stamps[-1] <= int(time.time() * 1000) + len(stamps)


def test_the_same_seed_gives_the_same_readings_however_they_are_asked_for() -> None:
    config = FleetConfig(devices=7, metrics=3, seed=42)

    def values(chunks: list[int]) -> list[tuple[object, object]]:
        fleet = Fleet(config)
        return [(r["device_id"], r["metrics"]) for size in chunks
                for r in fleet.next_readings(size)]

    fleet = Fleet(config)
    one_at_a_time = [fleet.next_reading() for _ in range(100)]
    expected = [(r["device_id"], r["metrics"]) for r in one_at_a_time]
    assert values([100]) == expected, "whole rounds at once: the same floats"
    assert values([3, 4, 7, 1, 85]) == expected
    assert values([50, 50]) == expected
    other = Fleet(FleetConfig(devices=7, metrics=3, seed=43)).next_readings(100)
    assert [r["metrics"] for r in other] != [m for _, m in expected]
    unseeded = [Fleet(FleetConfig(devices=7, metrics=3)).next_reading()["metrics"]
                for _ in range(2)]
    assert unseeded[0] != unseeded[1]
    negative = Fleet(FleetConfig(devices=7, metrics=3, seed=-42)).next_readings(100)
    assert [(r["device_id"], r["metrics"]) for r in negative] == expected, "as random.seed"


def test_values_start_uniform_in_0_100_and_walk_with_unit_gaussian_steps() -> None:
    devices = 20_000
    fleet = Fleet(FleetConfig(devices=devices, metrics=2, seed=5))
    first = [v for r in fleet.next_readings(devices) for v in r["metrics"].values()]  # type: ignore[union-attr]
    assert -6 < min(first) and max(first) < 106  # uniform(0, 100) plus one step
    assert 49 < statistics.fmean(first) < 51
    assert 28 < statistics.pstdev(first) < 30  # 100 / sqrt(12) = 28.9 (and the step's 1)

    walker = Fleet(FleetConfig(devices=1, metrics=1, seed=6))
    walk = [r["metrics"]["metric_0"] for r in walker.next_readings(20_000)]  # type: ignore[index]
    steps = [b - a for a, b in zip(walk, walk[1:])]
    assert abs(statistics.fmean(steps)) < 0.05
    assert 0.97 < statistics.pstdev(steps) < 1.03


class Recorder:
    """A ReadingSender that keeps how many readings each call had and their devices."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.devices: list[object] = []
        self.flushed = 0

    async def send_many(self, readings: list[dict[str, object]]) -> int:
        self.calls.append(len(readings))
        self.devices.extend(r["device_id"] for r in readings)
        return len(readings)

    async def flush(self) -> None:
        self.flushed += 1


async def test_run_fleet_sends_the_count_round_robin_and_flushes() -> None:
    sender, reports = Recorder(), []
    config = FleetConfig(devices=7, metrics=2, rate=0, count=2_500, seed=1)
    progress = await run_fleet(sender, config, reports.append)
    assert (progress.readings, progress.points) == (2_500, 5_000)
    assert sum(sender.calls) == 2_500 and sender.flushed == 1
    assert sender.devices == [f"sim-{i % 7:05d}" for i in range(2_500)]
    assert isinstance(reports[-1], Progress)


async def test_run_fleet_behind_its_rate_catches_up_in_bounded_calls() -> None:
    sender = Recorder()
    count = 3 * MAX_CALL_READINGS + 5
    config = FleetConfig(devices=1_000, metrics=1, rate=1e9, count=count)
    progress = await run_fleet(sender, config, lambda progress: None)
    assert progress.readings == count == sum(sender.calls)
    assert max(sender.calls) == MAX_CALL_READINGS, "never one list of everything due"


def test_simulate_refuses_topic_mode_both_before_it_connects() -> None:
    """``simulate`` publishes to one place: TOPIC_MODE=both (the workers' mode while moving
    to shared) is a usage error naming what to set; --topic-mode overrides it."""
    import os
    import subprocess
    import sys

    from tests.stack import REPO, free_port

    def simulate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "faust", "-A", "streams.app", "simulate", "--count", "1",
             *args], cwd=REPO, capture_output=True, text=True, timeout=60,
            env={**os.environ, "TOPIC_MODE": "both", "WEB_PORT": str(free_port()),
                 "KAFKA_BROKERS": f"127.0.0.1:{free_port()}",  # nothing listens there
                 "PRODUCER_DELIVERY_TIMEOUT": "0.5"})

    refused = simulate()
    assert refused.returncode == 2, refused.stderr
    assert ("Error: TOPIC_MODE=both is a worker mode for moving from per-device topics to "
            "shared; a producer publishes to one: set per-device or shared") in refused.stderr
    assert "Traceback" not in refused.stderr
    chosen = simulate("--topic-mode", "shared")
    assert chosen.returncode == 1 and "no Kafka broker reachable" in chosen.stderr, \
        "past the check: it tried to connect"
    assert simulate("--topic-mode", "both").returncode == 2, "not a choice either"

"""The event-time clock: late readings are told apart by event time, not wall clock."""
from __future__ import annotations

from tables.event_clock import BUCKET_US, EventClock

MINUTE = BUCKET_US
T = 1_800_000_000 * 1_000_000  # a minute boundary


def readings(*times: int, device: str = "d") -> tuple[str, list[int]]:
    return device, list(times)


def loaded(grace_us: int, **stored: int) -> EventClock:
    clock = EventClock(grace_us=grace_us)
    clock.load(["d", "fast", "slow", *stored], stored)
    return clock


def test_readings_are_late_only_once_their_bucket_closed_by_event_time() -> None:
    clock = loaded(grace_us=30_000_000)
    assert clock.observe(*readings(T + 10)) == 0
    # Out of order but the bucket [T, T+1m) is open until the clock passes T+1m+30s.
    assert clock.observe(*readings(T + MINUTE + 29_000_000)) == 0
    assert clock.observe(*readings(T + 5)) == 0
    assert clock.observe(*readings(T + 2 * MINUTE)) == 0
    assert clock.observe(*readings(T + 1, T + MINUTE + 1, T + 2 * MINUTE + 1)) == 1


def test_devices_have_their_own_clocks() -> None:
    clock = loaded(grace_us=0)
    clock.observe(*readings(T + 10 * MINUTE, device="fast"))
    assert clock.observe(*readings(T, device="slow")) == 0


def test_a_clock_loaded_from_the_database_survives_a_restart() -> None:
    clock = loaded(grace_us=0, d=T + 5 * MINUTE)
    assert clock.observe(*readings(T)) == 1
    assert clock.clock("d") == T + 5 * MINUTE


def test_clocks_not_loaded_are_missing_and_a_new_device_starts_at_zero() -> None:
    clock = EventClock(grace_us=0)
    assert sorted(clock.missing(["a", "b", "a"])) == ["a", "b"]
    clock.load(["a", "b"], {"a": T})
    assert clock.missing(["a", "b", "c"]) == ["c"]
    assert (clock.clock("a"), clock.clock("b"), clock.clock("c")) == (T, 0, None)


def test_the_least_recently_seen_clocks_are_evicted_beyond_the_bound() -> None:
    clock = EventClock(grace_us=0, max_devices=2)
    clock.load(["a", "b", "c"], {})
    clock.observe(*readings(T, device="a"))  # a is now the most recently seen
    assert clock.evict() == 1 and len(clock) == 2
    assert clock.missing(["a", "b", "c"]) == ["b"]


def test_eviction_waits_for_evict_and_drops_the_least_recently_used_first() -> None:
    clock = EventClock(grace_us=0, max_devices=3)
    clock.load(["a", "b", "c", "d", "e"], {"a": T})
    assert len(clock) == 5  # nothing dropped until evict()
    clock.observe(*readings(T + 1, device="b"))
    clock.observe(*readings(T + 2, device="a"))
    clock.load(["c"], {})  # loading does not make a clock recent
    assert clock.evict() == 2 and len(clock) == 3
    assert sorted(clock.missing(["a", "b", "c", "d", "e"])) == ["c", "d"]
    assert (clock.clock("a"), clock.clock("b"), clock.clock("e")) == (T + 2, T + 1, 0)
    assert clock.evict() == 0

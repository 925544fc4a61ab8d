"""The event-time clock: late readings are told apart by event time, not wall clock."""
from __future__ import annotations

from schema.validation import Reading
from tables.event_clock import BUCKET_US, EventClock

MINUTE = BUCKET_US
T = 1_800_000_000 * 1_000_000  # a minute boundary


def readings(*times: int, device: str = "d") -> list[Reading]:
    return [Reading(device_id=device, time_us=t, metrics={"m": 1.0}) for t in times]


def test_readings_are_late_only_once_their_bucket_closed_by_event_time() -> None:
    clock = EventClock(grace_us=30_000_000)
    assert clock.observe(readings(T + 10)) == 0
    # Out of order but the bucket [T, T+1m) is open until the clock passes T+1m+30s.
    assert clock.observe(readings(T + MINUTE + 29_000_000)) == 0
    assert clock.observe(readings(T + 5)) == 0
    assert clock.observe(readings(T + 2 * MINUTE)) == 0
    assert clock.observe(readings(T + 1, T + MINUTE + 1, T + 2 * MINUTE + 1)) == 1


def test_devices_have_their_own_clocks() -> None:
    clock = EventClock(grace_us=0)
    clock.observe(readings(T + 10 * MINUTE, device="fast"))
    assert clock.observe(readings(T, device="slow")) == 0


def test_a_clock_seeded_from_the_database_survives_a_restart() -> None:
    clock = EventClock(grace_us=0, known={"d": T + 5 * MINUTE})
    assert clock.observe(readings(T)) == 1
    assert clock.clock("d") == T + 5 * MINUTE

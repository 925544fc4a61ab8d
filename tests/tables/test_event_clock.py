"""The event-time clock: late readings are told apart by event time, not wall clock."""
from __future__ import annotations

from faust.exceptions import PartitionsMismatch

from schema.validation import Reading
from tables.event_clock import BUCKET_US, EventClock

MINUTE = BUCKET_US
T = 1_800_000_000 * 1_000_000  # a minute boundary


def readings(*times: int, device: str = "d") -> list[Reading]:
    return [Reading(device_id=device, time_us=t, metrics={"m": 1.0}) for t in times]


def test_readings_are_late_only_once_their_bucket_closed_by_event_time() -> None:
    clock = EventClock({}, grace_us=30_000_000)
    assert clock.observe(readings(T + 10), "t") == 0
    # Out of order but the bucket [T, T+1m) is open until the clock passes T+1m+30s.
    assert clock.observe(readings(T + MINUTE + 29_000_000), "t") == 0
    assert clock.observe(readings(T + 5), "t") == 0
    assert clock.observe(readings(T + 2 * MINUTE), "t") == 0
    assert clock.is_closed("d", T) and not clock.is_closed("d", T + MINUTE)
    assert clock.observe(readings(T + 1, T + MINUTE + 1, T + 2 * MINUTE + 1), "t") == 1


def test_devices_have_their_own_clocks() -> None:
    clock = EventClock({}, grace_us=0)
    clock.observe(readings(T + 10 * MINUTE, device="fast"), "t")
    assert clock.observe(readings(T, device="slow"), "t") == 0


def test_the_clock_is_written_to_the_table_once_per_step_and_read_back_after_restart() -> None:
    table: dict[str, int] = {}
    clock = EventClock(table, grace_us=0, persist_step_us=1_000_000)
    clock.observe(readings(T), "t")
    clock.observe(readings(T + 500_000), "t")
    assert table == {"d": T}
    clock.observe(readings(T + 1_000_000), "t")
    assert table == {"d": T + 1_000_000}
    restarted = EventClock(table, grace_us=0)
    assert restarted.clock("d") == T + 1_000_000


class MismatchedTable(dict):
    def __setitem__(self, key: str, value: int) -> None:
        raise PartitionsMismatch("source topic has 4 partitions, changelog 10")


def test_a_topic_whose_partitions_do_not_match_the_changelog_keeps_its_clock_in_memory() -> None:
    clock = EventClock(MismatchedTable(), grace_us=0)
    clock.observe(readings(T + 5 * MINUTE), "t4")
    assert clock.observe(readings(T), "t4") == 1

"""The stall watchdog's rule, on lag samples made by hand (no broker, no database)."""
from __future__ import annotations

from aiokafka.structs import TopicPartition as TP

from web.lag import LagSample, PartitionLag
from web.stall import StallWatchdog

A0, B0 = TP("device-data-a", 0), TP("device-data-b", 0)


def sample(at: float, **partitions: tuple[int, int]) -> LagSample:
    """This worker owns every partition given as name=(committed, end); a -> A0, b -> B0."""
    tps = {"a": A0, "b": B0}
    return LagSample(
        partitions={tps[name]: PartitionLag(tps[name].topic, 0, committed, end)
                    for name, (committed, end) in partitions.items()},
        assigned=frozenset(tps[name] for name in partitions), assignment_known=True,
        taken_at=at)


def test_a_partition_with_lag_and_a_still_commit_stalls_after_stall_seconds() -> None:
    dog = StallWatchdog(stall_seconds=60)
    assert dog.observe(sample(0, a=(5, 9), b=(3, 3)), database_up=True) == []
    assert dog.observe(sample(59, a=(5, 12), b=(3, 3)), database_up=True) == []
    assert dog.observe(sample(60, a=(5, 12), b=(3, 3)), database_up=True) == [A0]
    assert dog.stalls_total == 1 and dog.stalled_since == 60
    assert dog.observe(sample(63, a=(5, 12), b=(3, 3)), database_up=True) == [A0]
    assert dog.stalls_total == 1, "a stall lasting several samples counts once"


def test_a_moving_commit_or_no_lag_is_never_a_stall() -> None:
    dog = StallWatchdog(stall_seconds=10)
    for at in range(0, 100, 3):
        stalled = dog.observe(sample(at, a=(at, at + 50), b=(7, 7)), database_up=True)
        assert stalled == []
    assert dog.stalls_total == 0


def test_the_clock_starts_again_when_the_commit_moves() -> None:
    dog = StallWatchdog(stall_seconds=10)
    dog.observe(sample(0, a=(5, 9)), database_up=True)
    dog.observe(sample(9, a=(6, 9)), database_up=True)
    assert dog.observe(sample(18, a=(6, 9)), database_up=True) == []
    assert dog.observe(sample(19, a=(6, 9)), database_up=True) == [A0]


def test_a_database_outage_is_not_a_stall_and_restarts_the_clock() -> None:
    dog = StallWatchdog(stall_seconds=10)
    dog.observe(sample(0, a=(5, 9)), database_up=True)
    assert dog.observe(sample(30, a=(5, 9)), database_up=False) == []
    assert dog.observe(sample(39, a=(5, 9)), database_up=True) == []
    assert dog.observe(sample(40, a=(5, 9)), database_up=True) == [A0]


def test_a_sample_that_is_not_refreshed_never_makes_a_stall() -> None:
    dog = StallWatchdog(stall_seconds=10)
    stale = sample(0, a=(5, 9))
    for _ in range(50):
        assert dog.observe(stale, database_up=True) == []


def test_a_partition_given_away_is_forgotten() -> None:
    dog = StallWatchdog(stall_seconds=10)
    dog.observe(sample(0, a=(5, 9), b=(1, 4)), database_up=True)
    assert dog.observe(sample(10, b=(1, 4)), database_up=True) == [B0]
    assert dog.observe(sample(11, a=(5, 9), b=(2, 4)), database_up=True) == [], \
        "a partition owned again starts a new clock"
    assert dog.stalled_since is None


def test_before_the_assignment_is_known_nothing_is_judged() -> None:
    dog = StallWatchdog(stall_seconds=1)
    unknown = LagSample(partitions={A0: PartitionLag(A0.topic, 0, 1, 9)},
                        assigned=frozenset({A0}), assignment_known=False, taken_at=0)
    dog.observe(unknown, database_up=True)
    later = LagSample(partitions=unknown.partitions, assigned=unknown.assigned,
                      assignment_known=False, taken_at=100)
    assert dog.observe(later, database_up=True) == []

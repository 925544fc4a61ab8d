"""The replay plan (streams/replay.py) against fakes of the broker's answers: which offset
each partition goes back to, when the broker's offsets-for-times answer is believed, and
when the command refuses to commit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka.errors import UnsupportedVersionError
from aiokafka.structs import TopicPartition

from streams import replay as replay_module
from streams.replay import (
    EARLIEST_NO_ANSWER,
    EARLIEST_WRONG_ANSWER,
    FOUND_BY_TIME,
    FOUND_NOTHING_AFTER,
    NOT_LOOKED_UP,
    GroupState,
    ReplayError,
    WorkersRunning,
    parse_since,
    plan_replay,
    replay,
)
from streams.settings import Settings

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
SINCE = NOW - timedelta(hours=1)
SINCE_MS = int(SINCE.timestamp() * 1000)
TP0 = TopicPartition("device-data-a", 0)
TP1 = TopicPartition("device-data-a", 1)
GROUP = "devicestream"

CORRECT = object()  # the fake broker answers offsets-for-times as Kafka does


class FakeLog:
    """A broker holding, per partition, records with the given timestamps from ``start``.

    ``answers`` replaces the broker's offsets-for-times answer (CORRECT: Kafka's), or is an
    exception to raise. It also stands in for ``KafkaLog`` in ``replay``.
    """

    def __init__(self, timestamps: dict[TopicPartition, list[int]],
                 committed: dict[TopicPartition, int | None], *, start: int = 0,
                 answers: Any = CORRECT, members: tuple[str, ...] = (),
                 unreadable: frozenset[int] = frozenset()) -> None:
        self.timestamps = timestamps
        self.offsets = dict(committed)
        self.start = start
        self.answers = answers
        self.states = [GroupState("Stable" if members else "Empty", members)]
        self.unreadable = unreadable
        self.asked: list[TopicPartition] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.lose_commits = False

    async def __aenter__(self) -> "FakeLog":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def partitions(self, wanted: Any) -> list[TopicPartition]:
        return [tp for tp in self.timestamps if wanted(tp.topic)]

    async def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self.offsets.get(tp) for tp in tps}

    async def earliest(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.start)

    async def offsets_for_time(self, tps: list[TopicPartition],
                               ms: int) -> dict[TopicPartition, int | None]:
        self.asked += tps
        if isinstance(self.answers, Exception):
            raise self.answers
        if self.answers is not CORRECT:
            return {tp: self.answers[tp] for tp in tps}
        return {tp: next((self.start + i for i, ts in enumerate(self.timestamps[tp])
                          if ts >= ms), None) for tp in tps}

    async def first_record(self, tp: TopicPartition,
                           offset: int) -> replay_module.Record | None:
        if offset in self.unreadable:
            return None
        for i, ts in enumerate(self.timestamps[tp]):
            if self.start + i >= offset:
                return replay_module.Record(self.start + i, ts)
        return None

    async def group_state(self) -> GroupState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    async def commit(self, offsets: dict[TopicPartition, int], metadata: str) -> None:
        self.commits.append(dict(offsets))
        if not self.lose_commits:
            self.offsets.update(offsets)


def minutes(*offsets_from_since: float) -> list[int]:
    """Record timestamps, in minutes relative to SINCE."""
    return [SINCE_MS + int(m * 60_000) for m in offsets_from_since]


async def plan_of(log: FakeLog) -> dict[TopicPartition, replay_module.PartitionPlan]:
    plan = await plan_replay(log, GROUP, list(log.timestamps), SINCE)
    return {p.tp: p for p in plan.partitions}


# ---------------------------------------------------------------------------- --since

@pytest.mark.parametrize("text, expected", [
    ("2026-12-04T10:00:00Z", datetime(2026, 12, 4, 10, tzinfo=timezone.utc)),
    ("2026-12-04t10:00:00z", datetime(2026, 12, 4, 10, tzinfo=timezone.utc)),
    ("2026-12-04 11:30:00+01:30", datetime(2026, 12, 4, 10, tzinfo=timezone.utc)),
    ("2026-12-04T09:00:00.250-01:00",
     datetime(2026, 12, 4, 10, 0, 0, 250_000, tzinfo=timezone.utc)),
])
def test_since_takes_rfc3339_with_a_zone_as_utc(text: str, expected: datetime) -> None:
    parsed = parse_since(text, now=NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text, reason", [
    ("yesterday", "RFC 3339"),
    ("2026-12-04T10:00:00", "missing time zone"),
    ("2026-12-04", "RFC 3339"),
    ("2026-W49-5T10:00:00Z", "RFC 3339"),
    ("2026-02-30T10:00:00Z", "invalid date"),
    ("2026-12-04T25:00:00Z", "out of range"),
    ("2026-12-04T12:00:01Z", "in the future"),
    ("1969-12-31T23:59:59Z", "before 1970"),
])
def test_since_refuses_other_forms_and_the_future(text: str, reason: str) -> None:
    with pytest.raises(ReplayError, match=reason):
        parse_since(text, now=NOW)


# ---------------------------------------------------------------------------- planning

async def test_a_right_answer_rewinds_to_the_first_record_at_or_after_since() -> None:
    log = FakeLog({TP0: minutes(-3, -2, -1, 0, 1, 2)}, {TP0: 6})
    row = (await plan_of(log))[TP0]
    assert (row.committed, row.target, row.new_offset) == (6, 3, 3)
    assert row.found_by == FOUND_BY_TIME
    assert row.action == "rewind"


async def test_offsets_only_move_back() -> None:
    log = FakeLog({TP0: minutes(-3, -2, -1, 0, 1, 2)}, {TP0: 2})
    row = (await plan_of(log))[TP0]
    assert (row.target, row.new_offset) == (3, None)
    assert row.found_by == FOUND_BY_TIME
    assert row.action == "keep: committed offset is already at or before the target"


async def test_partitions_that_cannot_move_back_are_not_looked_up() -> None:
    log = FakeLog({TP0: minutes(-1, 1), TP1: minutes(-1, 1)}, {TP0: None, TP1: 5}, start=5)
    rows = await plan_of(log)
    assert log.asked == []
    assert rows[TP0].action.startswith("keep: nothing committed")
    assert rows[TP1].action.startswith("keep: committed offset is at or before the earliest")
    assert rows[TP0].found_by == rows[TP1].found_by == NOT_LOOKED_UP
    assert rows[TP0].new_offset is rows[TP1].new_offset is None


async def test_no_record_after_since_keeps_the_committed_offset() -> None:
    log = FakeLog({TP0: minutes(-3, -2, -1)}, {TP0: 3})
    row = (await plan_of(log))[TP0]
    assert (row.target, row.new_offset, row.found_by) == (None, None, FOUND_NOTHING_AFTER)
    assert row.action == "keep: nothing at or after --since"


async def test_a_wrong_nothing_after_answer_falls_back_to_the_earliest_offset() -> None:
    log = FakeLog({TP0: minutes(-3, -2, 1)}, {TP0: 3}, start=10, answers={TP0: None})
    log.offsets[TP0] = 13
    row = (await plan_of(log))[TP0]
    assert (row.target, row.new_offset) == (10, 10)
    assert row.found_by.startswith(EARLIEST_WRONG_ANSWER)
    assert "consumed record 12" in row.found_by


async def test_tansus_answer_by_append_time_falls_back_to_the_earliest_offset() -> None:
    # Tansu answers the first batch *appended* at or after the time: offset 0 for records
    # published with older timestamps, and offset 0 for a time after every record.
    log = FakeLog({TP0: minutes(-3, -2, -1, 0, 1), TP1: minutes(-3, -2, -1)},
                  {TP0: 5, TP1: 3}, answers={TP0: 0, TP1: 0})
    rows = await plan_of(log)
    assert (rows[TP0].target, rows[TP0].new_offset) == (0, 0)
    assert "record 0 is from" in rows[TP0].found_by
    assert rows[TP0].found_by.startswith(EARLIEST_WRONG_ANSWER)
    assert rows[TP1].found_by.startswith(EARLIEST_WRONG_ANSWER)
    assert (rows[TP1].target, rows[TP1].new_offset) == (0, 0)


async def test_an_answer_past_the_first_record_after_since_is_refused() -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1, 2)}, {TP0: 4}, answers={TP0: 2})
    row = (await plan_of(log))[TP0]
    assert row.found_by.startswith(EARLIEST_WRONG_ANSWER)
    assert "earlier record 1" in row.found_by
    assert row.new_offset == 0


async def test_an_answer_past_the_committed_offset_needs_the_last_record_before_since() -> None:
    log = FakeLog({TP0: minutes(-2, -1, 1)}, {TP0: 3}, answers={TP0: 3})
    row = (await plan_of(log))[TP0]
    assert row.found_by.startswith(EARLIEST_WRONG_ANSWER)
    assert row.new_offset == 0
    right = FakeLog({TP0: minutes(-2, -1, -0.5)}, {TP0: 3}, answers={TP0: 3})
    row = (await plan_of(right))[TP0]
    assert (row.found_by, row.new_offset) == (FOUND_BY_TIME, None)


async def test_an_answer_before_the_earliest_offset_is_refused() -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1)}, {TP0: 13}, start=10, answers={TP0: 4})
    row = (await plan_of(log))[TP0]
    assert "before the earliest retained offset 10" in row.found_by
    assert row.new_offset == 10


async def test_an_unreadable_record_means_the_answer_cannot_be_checked() -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1)}, {TP0: 3}, unreadable=frozenset({1}))
    row = (await plan_of(log))[TP0]
    assert row.found_by == f"{EARLIEST_WRONG_ANSWER} (record 1 could not be read)"
    assert row.new_offset == 0


async def test_a_broker_that_cannot_look_up_times_gives_the_earliest_offsets(caplog) -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1), TP1: minutes(-1)}, {TP0: 3, TP1: None},
                  answers=UnsupportedVersionError("ListOffsets v1"))
    rows = await plan_of(log)
    assert rows[TP0].found_by.startswith(EARLIEST_NO_ANSWER)
    assert "UnsupportedVersionError" in rows[TP0].found_by
    assert rows[TP0].new_offset == 0
    assert rows[TP1].new_offset is None
    assert "cannot look up offsets by time" in caplog.text


async def test_the_printed_plan_names_every_partition_and_the_fallbacks() -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1), TP1: minutes(-1, 0)}, {TP0: 3, TP1: 2},
                  answers={TP0: 1, TP1: 0})
    plan = await plan_replay(log, GROUP, [TP1, TP0], SINCE)
    lines = plan.lines()
    assert lines[0].endswith("2026-12-04T11:00:00.000Z")
    assert lines[1].split()[:4] == ["topic", "partition", "committed", "target"]
    assert lines[2].split()[:6] == ["device-data-a", "0", "3", "1", FOUND_BY_TIME, "rewind"]
    assert lines[3].split()[:5] == ["device-data-a", "1", "2", "0", "earliest:"]
    assert lines[4] == ("2 of 2 partition(s) to rewind (up to 4 record(s) to consume again); "
                        "1 from the earliest retained offset because the broker gave no "
                        "usable offset for that time")
    assert plan.rewinds == {TP0: 1, TP1: 0}


# ---------------------------------------------------------------------------- applying

@pytest.mark.parametrize("state, idle", [
    (GroupState("Empty", ()), True),
    (GroupState("Dead", ()), True),
    (GroupState("Stable", ("worker-1",)), False),
    (GroupState("PreparingRebalance", ()), False),
])
def test_a_group_is_idle_only_without_members(state: GroupState, idle: bool) -> None:
    assert state.idle is idle


async def run(log: FakeLog, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> list[str]:
    monkeypatch.setattr(replay_module, "KafkaLog", lambda settings, group: log)
    said: list[str] = []
    await replay(Settings(), GROUP, lambda topic: True, SINCE, say=said.append,
                 **{"apply": True, **kwargs})
    return said


async def test_a_dry_run_commits_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1)}, {TP0: 3})
    said = await run(log, monkeypatch, apply=False)
    assert log.commits == []
    assert said[-1] == "dry run: nothing committed"
    assert any(line.split()[:2] == ["device-data-a", "0"] for line in said)


async def test_apply_commits_the_rewinds_and_reads_them_back(monkeypatch) -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1), TP1: minutes(-1)}, {TP0: 3, TP1: 1})
    said = await run(log, monkeypatch)
    assert log.commits == [{TP0: 1}]
    assert log.offsets == {TP0: 1, TP1: 1}
    assert said[-1].startswith("applied: 1 offset(s) of group devicestream rewound")


async def test_apply_refuses_while_the_group_has_members(monkeypatch) -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1)}, {TP0: 3}, members=("worker-1",))
    with pytest.raises(WorkersRunning, match="Stop every worker") as refused:
        await run(log, monkeypatch)
    assert "BROKER_SESSION_TIMEOUT, 10 s" in str(refused.value)
    assert log.commits == []


async def test_apply_fails_when_the_offsets_read_back_differ(monkeypatch) -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1)}, {TP0: 3})
    log.lose_commits = True
    with pytest.raises(ReplayError, match=r"device-data-a\[0\] 3 instead of 1"):
        await run(log, monkeypatch)


async def test_apply_fails_when_a_worker_joins_meanwhile(monkeypatch) -> None:
    log = FakeLog({TP0: minutes(-1, 0, 1)}, {TP0: 3})
    log.states = [GroupState("Empty", ()), GroupState("Stable", ("worker-1",))]
    with pytest.raises(WorkersRunning, match="joined"):
        await run(log, monkeypatch)


async def test_no_followed_topic_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    log = FakeLog({TP0: minutes(-1)}, {TP0: 1})
    monkeypatch.setattr(replay_module, "KafkaLog", lambda settings, group: log)
    with pytest.raises(ReplayError, match="nothing to replay"):
        await replay(Settings(), GROUP, lambda topic: False, SINCE, apply=False, say=print)

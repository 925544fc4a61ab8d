"""Replay after a database restore: rewind the consumer group's committed offsets to a time.

A database restored to time T lacks the readings written after T, although their offsets
were committed. ``faust -A streams.app replay --since T`` (``streams.commands``) rewinds the
app's consumer group, on every partition of every topic the workers follow, to the first
offset whose record is at or after T; the next worker consumes from there, and the
idempotent sink stores what is missing exactly once and nothing twice.

How a partition's target is found: Kafka's offsets-for-times (ListOffsets with a
timestamp), checked against the records themselves, since the local broker (Tansu 0.6)
answers it wrongly: it looks up the time each batch was appended, not the records' own
timestamps, and answers offset 0 when nothing is at or after the time. An answer that fails
the check, or no answer at all, falls back to the earliest retained offset (a longer replay,
never a lost reading), and the plan says so for that partition.

Offsets only ever move back: a committed offset at or before its target stays. Nothing is
committed while the group has members: a running worker keeps its own position and would
commit over the rewind (and Kafka, like Tansu, refuses a commit from outside a group that
has members). Tansu 0.6 keeps a stopped Faust worker listed until another worker joins, and
refuses a join with another assignor protocol, so there a group that ever had a worker
cannot be rewound from outside (docs/backups.md#replay-after-a-restore).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from schema.timestamps import parse_rfc3339
from streams.settings import Settings
from streams.topics import kafka_client_kwargs
from web.kafka_offsets import BrokerOffsets

log = logging.getLogger(__name__)

FOUND_BY_TIME = "offsets_for_times"
FOUND_NOTHING_AFTER = "end: no record at or after that time"
EARLIEST_NO_ANSWER = "earliest: broker has no offset for that time"
EARLIEST_WRONG_ANSWER = "earliest: broker's offset for that time is wrong"
NOT_LOOKED_UP = "-"

# States of a group without members (Kafka: Empty once it has offsets, Dead before).
IDLE_GROUP_STATES = ("Empty", "Dead")
LOOKUP_TIMEOUT_SECONDS = 30.0  # aiokafka's offsets_for_times may wait forever for a leader
RECORD_WAIT_MS = 5_000  # reading one record of a partition that holds it

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


class ReplayError(Exception):
    """The replay cannot be planned or applied; nothing more was committed."""


class WorkersRunning(ReplayError):
    """The consumer group has members: committing now would be overwritten or refused."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an RFC 3339 date-time with a zone, not in the future, as UTC."""
    us = parse_rfc3339(text)
    if isinstance(us, str):
        # the parser's reasons are worded for readings, which may also be epoch milliseconds
        detail = "" if "epoch" in us else f" ({us.removeprefix('time: ')})"
        raise ReplayError(f"must be an RFC 3339 date-time with a zone, like "
                          f"2026-12-04T10:00:00Z; got {text!r:.80}{detail}")
    moment = _EPOCH + timedelta(microseconds=us)
    now = now or datetime.now(timezone.utc)
    if moment > now:
        raise ReplayError(f"{text} is in the future (now is {_iso(now)})")
    if moment < _EPOCH:
        raise ReplayError(f"{text} is before 1970: Kafka has no such timestamps")
    return moment


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _iso_ms(ms: int) -> str:
    return _iso(datetime.fromtimestamp(ms / 1000, timezone.utc))



@dataclass(frozen=True)
class Record:
    """Where one record is and its Kafka timestamp (milliseconds since the epoch)."""

    offset: int
    timestamp_ms: int


class PartitionLog(Protocol):
    """What planning asks the broker (``KafkaLog``; the unit tests use a fake)."""

    async def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition; None: never committed."""

    async def earliest(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The earliest retained offset of each partition."""

    async def offsets_for_time(self, tps: list[TopicPartition],
                               ms: int) -> dict[TopicPartition, int | None]:
        """The broker's first offset at or after ``ms`` (None: none); may raise KafkaError."""

    async def first_record(self, tp: TopicPartition, offset: int) -> Record | None:
        """The first record at or after ``offset`` (None: none could be read)."""


@dataclass(frozen=True)
class PartitionPlan:
    """One partition's rewind: its committed offset now and where replay starts."""

    topic: str
    partition: int
    committed: int | None
    target: int | None  # None: not looked up, or no record at or after --since
    found_by: str

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def new_offset(self) -> int | None:
        """The offset to commit, or None to leave the committed one (never moves forward)."""
        if self.committed is None or self.target is None or self.committed <= self.target:
            return None
        return self.target

    @property
    def action(self) -> str:
        if self.new_offset is not None:
            return "rewind"
        if self.committed is None:
            return "keep: nothing committed (the group starts at the earliest retained offset)"
        if self.found_by == NOT_LOOKED_UP:
            return "keep: committed offset is at or before the earliest retained offset"
        if self.target is None:
            return "keep: nothing at or after --since"
        return "keep: committed offset is already at or before the target"


@dataclass(frozen=True)
class ReplayPlan:
    """The rewind of one consumer group to ``since``, partition by partition."""

    group: str
    since: datetime
    partitions: tuple[PartitionPlan, ...]

    @property
    def rewinds(self) -> dict[TopicPartition, int]:
        """The offsets to commit: only the partitions that move back."""
        return {p.tp: p.new_offset for p in self.partitions if p.new_offset is not None}

    def lines(self) -> list[str]:
        """The plan as a table and a summary, for the operator."""
        head = ("topic", "partition", "committed", "target", "how the target was found", "action")
        rows = [head] + [
            (p.topic, str(p.partition), _show(p.committed), _show(p.target), p.found_by, p.action)
            for p in self.partitions
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
        table = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip()
                 for row in rows]
        replayed = sum(p.committed - p.new_offset for p in self.partitions
                       if p.committed is not None and p.new_offset is not None)
        fallbacks = sum(p.found_by.startswith("earliest") for p in self.partitions)
        return [
            f"replay plan of consumer group {self.group}: back to the first offset at or after "
            f"{_iso(self.since)}",
            *table,
            f"{len(self.rewinds)} of {len(self.partitions)} partition(s) to rewind "
            f"(up to {replayed} record(s) to consume again); {fallbacks} from the earliest "
            "retained offset because the broker gave no usable offset for that time",
        ]


def _show(offset: int | None) -> str:
    return "-" if offset is None else str(offset)


async def plan_replay(kafka: PartitionLog, group: str, partitions: Iterable[TopicPartition],
                      since: datetime) -> ReplayPlan:
    """Where each partition's replay starts: its first record at or after ``since``.

    Only partitions with a committed offset past their earliest retained one can move back;
    the others are not looked up.
    """
    tps = sorted(set(partitions))
    committed = await kafka.committed(tps)
    earliest = await kafka.earliest(tps)
    # the committed offset of each partition that can move back
    movable = {tp: c for tp in tps if (c := committed.get(tp)) is not None and c > earliest[tp]}
    since_ms = _ms(since)
    answers: dict[TopicPartition, int | None] | None = None
    no_answer = EARLIEST_NO_ANSWER
    if movable:
        try:
            answers = await kafka.offsets_for_time(list(movable), since_ms)
        except (KafkaError, asyncio.TimeoutError) as exc:
            no_answer = f"{EARLIEST_NO_ANSWER} ({type(exc).__name__}: {exc})"
            log.warning("replay of group %s: the broker cannot look up offsets by time "
                        "(%s: %s); using the earliest retained offsets", group,
                        type(exc).__name__, exc)
    rows = []
    for tp in tps:
        target: int | None = None
        found_by = NOT_LOOKED_UP
        if tp in movable:
            if answers is None or tp not in answers:
                target, found_by = earliest[tp], no_answer
            else:
                answer = answers[tp]
                problem = await _check_answer(kafka, tp, answer, since_ms, earliest[tp],
                                              movable[tp])
                if problem is None:
                    target = answer
                    found_by = FOUND_BY_TIME if answer is not None else FOUND_NOTHING_AFTER
                else:
                    target, found_by = earliest[tp], f"{EARLIEST_WRONG_ANSWER} ({problem})"
                    log.warning("replay of group %s: %s[%d]: the broker answered offset %s "
                                "for %s, but %s; using the earliest retained offset %d",
                                group, tp.topic, tp.partition, answer, _iso(since), problem,
                                earliest[tp])
        rows.append(PartitionPlan(tp.topic, tp.partition, committed.get(tp), target, found_by))
    return ReplayPlan(group, since, tuple(rows))


async def _check_answer(kafka: PartitionLog, tp: TopicPartition, answer: int | None,
                        since_ms: int, earliest: int, committed: int) -> str | None:
    """Why the broker's first offset at or after ``since_ms`` is wrong, or None if it holds.

    Only what matters below ``committed`` is checked (nothing at or after it was consumed):
    the record at the answer must be at or after the time and the one before it earlier;
    an answer at or past the committed offset (or none) needs the last consumed record to
    be earlier than the time.
    """
    if answer is not None and answer < earliest:
        return f"offset {answer} is before the earliest retained offset {earliest}"
    if answer is None or answer >= committed:
        last = await kafka.first_record(tp, committed - 1)
        if last is None:
            return f"record {committed - 1} could not be read"
        if last.offset < committed and last.timestamp_ms >= since_ms:
            return (f"consumed record {last.offset} is from {_iso_ms(last.timestamp_ms)}, "
                    "at or after that time")
        return None
    first = await kafka.first_record(tp, answer)
    if first is None:
        return f"record {answer} could not be read"
    if first.offset < committed and first.timestamp_ms < since_ms:
        return f"record {first.offset} is from {_iso_ms(first.timestamp_ms)}, before that time"
    if answer > earliest:
        before = await kafka.first_record(tp, answer - 1)
        if before is None:
            return f"record {answer - 1} could not be read"
        if before.offset < answer and before.timestamp_ms >= since_ms:
            return (f"the earlier record {before.offset} is from "
                    f"{_iso_ms(before.timestamp_ms)}, already at or after that time")
    return None


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the broker describes it: its state and member ids."""

    state: str
    members: tuple[str, ...]

    @property
    def idle(self) -> bool:
        """No member: committed offsets are what the next worker starts from."""
        return not self.members and self.state in IDLE_GROUP_STATES

    def describe(self) -> str:
        return f"state {self.state}, {len(self.members)} member(s)"


class KafkaLog:
    """``PartitionLog`` over the broker, plus the group's state and the commit.

    Use as an async context manager. Reads go through a consumer without a group; only
    ``commit`` acts as the group, with manually assigned partitions (it never joins it).
    """

    def __init__(self, settings: Settings, group: str) -> None:
        self._group = group
        self._kwargs = kafka_client_kwargs(settings)
        self._kwargs["client_id"] = "devicestream-replay"
        self._offsets = BrokerOffsets(**self._kwargs)
        self._admin = AIOKafkaAdminClient(**self._kwargs)
        self._reader = AIOKafkaConsumer(**self._kwargs, group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest")

    async def __aenter__(self) -> "KafkaLog":
        await self._offsets.start()
        await self._admin.start()
        await self._reader.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._reader.stop()
        await self._admin.close()
        await self._offsets.close()

    async def partitions(self, wanted: Callable[[str], bool]) -> list[TopicPartition]:
        """Every partition of the topics ``wanted`` accepts."""
        _, tps = await self._offsets.partitions(wanted)
        return tps

    async def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return await self._offsets.committed(self._group, tps)

    async def earliest(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._reader.beginning_offsets(tps) if tps else {}

    async def offsets_for_time(self, tps: list[TopicPartition],
                               ms: int) -> dict[TopicPartition, int | None]:
        found = await asyncio.wait_for(
            self._reader.offsets_for_times(dict.fromkeys(tps, ms)), LOOKUP_TIMEOUT_SECONDS)
        return {tp: (answer.offset if answer is not None else None)
                for tp, answer in found.items()}

    async def first_record(self, tp: TopicPartition, offset: int) -> Record | None:
        self._reader.assign([tp])
        self._reader.seek(tp, offset)
        fetched = await self._reader.getmany(tp, timeout_ms=RECORD_WAIT_MS, max_records=1)
        for record in fetched.get(tp, ()):
            return Record(record.offset, record.timestamp)
        return None

    async def group_state(self) -> GroupState:
        (response,) = await self._admin.describe_consumer_groups([self._group])
        # DescribeGroups v0-v2: (error_code, group_id, state, protocol_type, protocol, members)
        (error_code, _, state, _, _, members, *_), = response.groups
        if error_code:
            raise for_code(error_code)(f"describing consumer group {self._group} failed")
        return GroupState(state, tuple(member[0] for member in members))

    async def commit(self, offsets: dict[TopicPartition, int], metadata: str) -> None:
        """Commit ``offsets`` for the group from outside it (refused while it has members)."""
        committer = AIOKafkaConsumer(**self._kwargs, group_id=self._group,
                                     enable_auto_commit=False)
        await committer.start()
        try:
            committer.assign(list(offsets))
            await committer.commit({tp: OffsetAndMetadata(offset, metadata)
                                    for tp, offset in offsets.items()})
        finally:
            await committer.stop()


async def replay(settings: Settings, group: str, wanted: Callable[[str], bool],
                 since: datetime, *, apply: bool, say: Callable[[str], None]) -> ReplayPlan:
    """Plan the rewind of ``group`` on the partitions of the topics ``wanted`` accepts, print
    it with ``say``, and (``apply``) commit it and check the committed offsets read back.

    Refuses to commit while the group has members.
    """
    async with KafkaLog(settings, group) as kafka:
        tps = await kafka.partitions(wanted)
        if not tps:
            raise ReplayError(
                f"no topic on {settings.kafka.brokers} is followed by this app "
                f"(TOPIC_MODE={settings.topics.mode.value}, "
                f"DEVICE_FILTER={settings.topics.device_filter!r}): "
                "nothing to replay")
        plan = await plan_replay(kafka, group, tps, since)
        for line in plan.lines():
            say(line)
        before = await kafka.group_state()
        say(f"consumer group {group}: {before.describe()}")
        if not apply:
            say("dry run: nothing committed")
            return plan
        if not before.idle:
            raise WorkersRunning(_stop_workers_first(group, before, settings))
        if not plan.rewinds:
            say("nothing to rewind: every committed offset is already at or before its target")
            return plan
        log.info("replay of group %s since %s: committing %d rewound offset(s)",
                 group, _iso(since), len(plan.rewinds))
        await kafka.commit(plan.rewinds, f"replay --since {_iso(since)}")
        await _verify(kafka, group, plan, before)
        say(f"applied: {len(plan.rewinds)} offset(s) of group {group} rewound, read back and "
            "verified; start the workers")
        return plan


async def _verify(kafka: KafkaLog, group: str, plan: ReplayPlan, before: GroupState) -> None:
    """The committed offsets read back equal the plan, and no worker joined meanwhile."""
    committed = await kafka.committed(list(plan.rewinds))
    wrong = {tp: (want, committed.get(tp)) for tp, want in plan.rewinds.items()
             if committed.get(tp) != want}
    if wrong:
        shown = ", ".join(f"{tp.topic}[{tp.partition}] {got} instead of {want}"
                          for tp, (want, got) in sorted(wrong.items())[:5])
        raise ReplayError(f"the broker holds other offsets than committed for group {group}: "
                          f"{shown}{' ...' if len(wrong) > 5 else ''}; run replay again")
    after = await kafka.group_state()
    if before.idle and not after.idle:
        raise WorkersRunning(
            f"a worker joined consumer group {group} while the offsets were committed "
            f"({after.describe()}): it may commit over the rewind. Stop it and run replay again")


def _stop_workers_first(group: str, state: GroupState, settings: Settings) -> str:
    return (
        f"consumer group {group} has {state.describe()}: a running worker keeps its own "
        "position and commits over a rewind, so nothing was committed. Stop every worker of "
        f"the group (APP_ID={group}) and run replay again: a worker stopped with SIGTERM "
        "leaves the group at once, a killed one after its session timeout "
        f"(BROKER_SESSION_TIMEOUT, {settings.kafka.session_timeout:g} s). The local Tansu "
        "broker (Tansu 0.6) keeps listing a stopped worker until another worker joins, and "
        "refuses commits from outside the group meanwhile: there, replay only works on a "
        "group whose workers left it."
    )

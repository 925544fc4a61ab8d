"""Lag arithmetic and the broker offset parsing behind /pipeline/lag (no broker needed)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka import errors as kafka_errors
from aiokafka.structs import TopicPartition as TP

from web.kafka_log_dirs import (
    DescribeLogDirsRequest,
    DescribeLogDirsResponse_v0,
    sizes_of_log_dirs,
)
from web.kafka_offsets import (
    BrokerOffsets,
    Watermarks,
    committed_of_offset_fetch,
    group_by_topic,
    watermarks_of_fetch,
)
from web.lag import (
    Assignment,
    EndOffsetTimes,
    LagSample,
    LagSampler,
    PartitionLag,
    TopicSize,
    lag_report,
    lag_summary,
    max_lag_seconds,
    partition_lags,
    topic_sizes,
    topics_report,
)

A0, A1, B0 = TP("device-data-a", 0), TP("device-data-a", 1), TP("device-data-b", 0)


def test_lag_is_end_minus_committed_and_total_sums_them() -> None:
    lags = partition_lags(
        [A0, A1, B0],
        {A0: Watermarks(0, 10), A1: Watermarks(0, 7), B0: Watermarks(0, 3)},
        {A0: 4, A1: 7, B0: 0},
    )
    report = lag_report(lags.values())
    assert report == {"total_lag": 9, "partitions": [
        {"topic": "device-data-a", "partition": 0, "committed": 4, "end": 10, "lag": 6, "lag_seconds": None},
        {"topic": "device-data-a", "partition": 1, "committed": 7, "end": 7, "lag": 0, "lag_seconds": None},
        {"topic": "device-data-b", "partition": 0, "committed": 0, "end": 3, "lag": 3, "lag_seconds": None},
    ]}


def test_a_partition_never_committed_resumes_from_its_log_start() -> None:
    lags = partition_lags([A0], {A0: Watermarks(log_start=5, end=12)}, {A0: None})
    assert lags[A0] == PartitionLag("device-data-a", 0, committed=5, end=12)
    assert lags[A0].lag == 7


def test_unmeasured_figures_are_null_and_make_the_total_null() -> None:
    # end unknown (fetch failed), committed unknown (offset fetch did not cover it)
    lags = partition_lags([A0, A1], {A1: Watermarks(0, 9)}, {A0: 3})
    assert lags[A0].as_json() == {"topic": "device-data-a", "partition": 0,
                                  "committed": 3, "end": None, "lag": None, "lag_seconds": None}
    assert lags[A1].committed is None and lags[A1].lag is None
    assert lag_report(lags.values())["total_lag"] is None


def test_no_partitions_is_a_measured_zero() -> None:
    assert lag_report([]) == {"total_lag": 0, "partitions": []}


def test_own_scope_lists_every_assigned_partition_even_unmeasured_ones() -> None:
    sample = LagSample(partitions={A0: PartitionLag("device-data-a", 0, 1, 2)},
                       assigned=frozenset({A0, B0}), assignment_known=True)
    assert [p.as_json() for p in sample.own()] == [
        {"topic": "device-data-a", "partition": 0, "committed": 1, "end": 2, "lag": 1, "lag_seconds": None},
        {"topic": "device-data-b", "partition": 0, "committed": None, "end": None, "lag": None, "lag_seconds": None},
    ]
    assert sample.group() == [PartitionLag("device-data-a", 0, 1, 2)]


def test_the_summary_gives_totals_and_counts_only() -> None:
    sample = LagSample(partitions={A0: PartitionLag("device-data-a", 0, 1, 5),
                                   B0: PartitionLag("device-data-b", 0, 0, 2)},
                       assigned=frozenset({A0}), assignment_known=True)
    assert lag_summary(sample) == {"worker": 4, "group": 6, "worker_partitions": 1,
                                   "group_partitions": 2, "worker_seconds": None,
                                   "group_seconds": None}
    unassigned = LagSample(partitions=sample.partitions, assigned=frozenset(),
                           assignment_known=False)
    assert lag_summary(unassigned)["worker"] is None
    assert lag_summary(None) == {"worker": None, "group": None, "worker_partitions": None,
                                 "group_partitions": None}


class FakeOffsets:
    def __init__(self, partitions: list[TP]) -> None:
        self.topics = partitions
        self.calls: list[str] = []

    async def partitions(self, wanted, expected=()):
        return "metadata", [tp for tp in self.topics if wanted(tp.topic)]

    async def committed(self, group_id, tps):
        self.calls.append("committed")
        return {tp: None for tp in tps}

    async def watermarks(self, metadata, tps):
        self.calls.append("watermarks")
        return {tp: Watermarks(0, 10) for tp in tps}

    async def log_sizes(self, metadata, tps):
        return {tp: 1000 * (tp.partition + 1) for tp in tps}


async def test_own_lag_is_known_only_once_an_assignment_covered_every_device_topic() -> None:
    offsets = FakeOffsets([A0, A1, B0, TP("other-topic", 0)])
    current: list[Assignment | None] = [None]
    sampler = LagSampler(offsets, "group", lambda t: t.startswith("device-data-"),
                         lambda: current[0])

    sample = await sampler.measure()  # not assigned yet
    assert not sample.assignment_known
    assert sorted(sample.partitions) == [A0, A1, B0]
    assert offsets.calls == ["committed", "watermarks"]  # committed before the end

    # the first assignment of a fresh worker: made before it subscribed to device topics
    current[0] = Assignment(frozenset({TP("app-internal", 0)}), frozenset({"app-internal"}))
    assert not (await sampler.measure()).assignment_known

    current[0] = Assignment(frozenset({A1}), frozenset({"device-data-a", "device-data-b"}))
    sample = await sampler.measure()
    assert sample.assignment_known and sample.assigned == {A1}
    assert lag_report(sample.own())["total_lag"] == 10
    assert sample.topics == {"device-data-a": TopicSize(20, 3000),
                             "device-data-b": TopicSize(10, 1000)}

    # a device topic created later does not make it unknown again
    offsets.topics.append(TP("device-data-c", 0))
    assert (await sampler.measure()).assignment_known


def _fetch_response(version: int, partitions: list[tuple]) -> SimpleNamespace:
    return SimpleNamespace(API_VERSION=version, topics=[("device-data-a", partitions)])


def test_watermarks_come_from_the_fetch_high_watermark() -> None:
    # v11 partition: partition, error, high watermark, last stable, log start,
    # aborted transactions, preferred read replica, records
    response = _fetch_response(11, [
        (0, 0, 300, 300, 0, None, -1, b"batch"),
        (1, 0, 0, 0, -1, None, -1, b""),
        (2, kafka_errors.NotLeaderForPartitionError.errno, -1, -1, -1, None, -1, b""),
    ])
    found, errors = watermarks_of_fetch(response)
    assert found == {A0: Watermarks(0, 300), A1: Watermarks(None, 0)}
    assert errors == {TP("device-data-a", 2): kafka_errors.NotLeaderForPartitionError.errno}
    # v4 has no log start offset
    found, _ = watermarks_of_fetch(_fetch_response(4, [(0, 0, 42, 42, None, b"")]))
    assert found == {A0: Watermarks(None, 42)}


def test_committed_offsets_minus_one_means_none() -> None:
    response = SimpleNamespace(error_code=0, topics=[
        ("device-data-a", [(0, 17, "", 0), (1, -1, "", 0)])])
    assert committed_of_offset_fetch(response) == {A0: 17, A1: None}
    failing = SimpleNamespace(error_code=kafka_errors.CoordinatorNotAvailableError.errno,
                              topics=[])
    with pytest.raises(kafka_errors.CoordinatorNotAvailableError):
        committed_of_offset_fetch(failing)


def test_requests_list_partitions_by_topic() -> None:
    assert group_by_topic([B0, A1, A0]) == {"device-data-a": [0, 1], "device-data-b": [0]}


async def test_each_probe_fetches_from_the_last_end_seen_and_recovers_from_out_of_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    offsets = BrokerOffsets(["127.0.0.1:1"])
    fetched: list[dict[TP, int]] = []
    ends = {A0: 300, A1: 0}
    out_of_range = kafka_errors.OffsetOutOfRangeError.errno

    async def fake_fetch(node, requested):
        fetched.append(dict(requested))
        found = {tp: Watermarks(0, ends[tp]) for tp, at in requested.items() if at <= ends[tp]}
        errors = {tp: out_of_range for tp, at in requested.items() if at > ends[tp]}
        return found, errors

    async def fake_list_latest(node, tps):
        return {tp: ends[tp] for tp in tps}

    monkeypatch.setattr(offsets, "_fetch", fake_fetch)
    monkeypatch.setattr(offsets, "_list_latest", fake_list_latest)
    metadata = SimpleNamespace(leader_for_partition=lambda tp: 1)

    assert await offsets.watermarks(metadata, [A0, A1]) == {A0: Watermarks(0, 300),
                                                           A1: Watermarks(0, 0)}
    assert fetched[-1] == {A0: 0, A1: 0}
    ends[A0] = 350
    assert (await offsets.watermarks(metadata, [A0, A1]))[A0].end == 350
    assert fetched[-1] == {A0: 300, A1: 0}  # from the last end: at most the new records
    ends[A0] = 10  # topic recreated: the old end is past the new log's end
    assert (await offsets.watermarks(metadata, [A0]))[A0].end == 10
    assert fetched[-2:] == [{A0: 350}, {A0: 10}]


def test_topic_sizes_sum_partitions_and_are_null_where_a_partition_is_unmeasured() -> None:
    marks = {A0: Watermarks(2, 10), A1: Watermarks(0, 5), B0: Watermarks(None, 3)}
    sizes = topic_sizes([A0, A1, B0], marks, {A0: 700, A1: 300})
    assert sizes == {"device-data-a": TopicSize(13, 1000), "device-data-b": TopicSize(None, None)}
    assert topic_sizes([A0], marks, None) == {"device-data-a": TopicSize(8, None)}
    assert topics_report(sizes) == [
        {"topic": "device-data-a", "messages": 13, "bytes": 1000},
        {"topic": "device-data-b", "messages": None, "bytes": None}]


def test_log_dir_sizes_decode_from_the_wire_and_skip_future_replicas_and_failed_dirs() -> None:
    wire = DescribeLogDirsResponse_v0(0, [
        (0, "/data/a", [("device-data-a", [(0, 700, 0, False), (0, 650, 0, True)]),
                        ("device-data-b", [(0, 999, 0, False)])]),
        (0, "/data/b", [("device-data-a", [(1, 300, 0, False)])]),
        (57, "/data/broken", [("device-data-a", [(1, 5, 0, False)])]),
    ]).encode()
    response = DescribeLogDirsResponse_v0.decode(wire)
    assert sizes_of_log_dirs(response, [A0, A1]) == {A0: 700, A1: 300}


def test_log_dirs_request_picks_a_version_the_broker_has_and_refuses_without_one() -> None:
    request = DescribeLogDirsRequest({"device-data-a": [0, 1]})
    struct = request.prepare({35: (0, 4)})
    assert struct.API_VERSION == 1 and struct.topics == [("device-data-a", [0, 1])]
    with pytest.raises(kafka_errors.IncompatibleBrokerVersion):
        request.prepare({1: (0, 11)})  # Tansu lists no DescribeLogDirs


async def test_log_sizes_are_none_once_the_broker_lacks_describe_log_dirs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    offsets = BrokerOffsets(["127.0.0.1:1"])
    sent: list[object] = []

    class Client:
        async def send(self, node, request):
            sent.append(request)
            request.prepare({1: (0, 11)})

    async def start():
        return Client()

    monkeypatch.setattr(offsets, "start", start)
    metadata = SimpleNamespace(leader_for_partition=lambda tp: 1)
    assert await offsets.log_sizes(metadata, [A0, A1]) is None
    assert await offsets.log_sizes(metadata, [A0, A1]) is None
    assert len(sent) == 1, "not asked again"


def test_lag_seconds_interpolate_when_the_end_passed_the_committed_offset() -> None:
    times = EndOffsetTimes()
    for at, end in ((100.0, 10), (103.0, 16), (106.0, 22)):
        times.observe(A0, end, at)
    assert times.age(A0, committed=9, now=110.0) == 10.0, "older than the first look"
    # Offset 12 was written between 100 (end 10) and 103 (end 16): at 100 + 3 * 3/6.
    assert times.age(A0, committed=12, now=110.0) == 8.5
    assert times.age(A0, committed=12, now=111.0) == 9.5, "the points it needs are kept"
    assert times.age(A0, committed=15, now=111.0) == 8.0
    assert times.age(A0, committed=22, now=112.0) == 0.0   # nothing uncommitted
    times.observe(A0, 24, 115.0)
    assert times.age(A0, committed=22, now=117.0) == 6.5   # between 106 (22) and 115 (24)
    assert times.age(A0, committed=23, now=117.0) == 2.0


def test_lag_seconds_are_measured_in_each_sample_and_summed_up_as_maxima() -> None:
    times = EndOffsetTimes()
    partition_lags([A0, B0], {A0: Watermarks(0, 5), B0: Watermarks(0, 3)}, {A0: 5, B0: 0},
                   times, now=10.0)
    lags = partition_lags([A0, B0], {A0: Watermarks(0, 8), B0: Watermarks(0, 3)},
                          {A0: 5, B0: 3}, times, now=13.0)
    # Offset 5 was written between 10 (end 5) and 13 (end 8): at 10 + 3 * 1/3.
    assert (lags[A0].lag_seconds, lags[B0].lag_seconds) == (2.0, 0.0)
    lags = partition_lags([A0, B0], {A0: Watermarks(0, 8), B0: Watermarks(0, 3)},
                          {A0: 5, B0: 3}, times, now=20.0)
    assert (lags[A0].lag_seconds, lags[B0].lag_seconds) == (9.0, 0.0)
    assert max_lag_seconds(lags.values()) == 9.0
    assert max_lag_seconds([PartitionLag("t", 0, 1, 2)]) is None, "unmeasured is not 0"
    assert max_lag_seconds([]) == 0.0


def test_lag_seconds_stay_close_when_thinned_out_and_forget_a_reset_log() -> None:
    times = EndOffsetTimes(max_points=64)
    for i in range(1000):  # a stall: the end grows for 1,000 samples, the commit stands
        times.observe(A0, 11 + i, float(i))
    assert times.age(A0, committed=10, now=1000.0) == 1000.0, "the oldest point is kept"
    assert abs(times.age(A0, committed=21, now=1000.0) - (1000 - 11)) <= 1000 / 32
    times.observe(A0, 3, 200.0)  # the topic was recreated: offsets start again
    assert times.age(A0, committed=1, now=201.0) == 1.0
    times.keep([B0])
    assert times.age(A0, committed=1, now=202.0) == 0.0

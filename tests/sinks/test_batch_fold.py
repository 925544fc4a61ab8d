"""The worker-side grouping of the fast path against plain Python over the same points."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from sinks.batch_fold import first_of_each_key, fold, runs

MINUTE = 60_000_000
HOUR = 3_600_000_000

points = st.lists(
    st.tuples(st.integers(1, 4),  # series
              st.integers(-2 * HOUR, 2 * HOUR),  # time, either side of the epoch
              st.floats(-1e6, 1e6, allow_nan=False)),
    min_size=1, max_size=200)


def _columns(batch: list[tuple[int, int, float]]) -> tuple[np.ndarray, ...]:
    series, time_us, value = zip(*batch)
    return (np.array(series, np.int32), np.array(time_us, np.int64),
            np.array(value, np.float64))


@given(points)
@settings(max_examples=200, deadline=None)
def test_first_of_each_key_keeps_the_first_arrival_of_each_series_and_time(batch) -> None:
    series, time_us, _ = _columns(batch)
    rows = first_of_each_key(series, time_us, np.arange(len(batch)))
    expected: dict[tuple[int, int], int] = {}
    for index, (s, t, _) in enumerate(batch):
        expected.setdefault((s, t), index)
    assert rows.tolist() == [expected[key] for key in sorted(expected)]


def test_first_of_each_key_takes_only_the_rows_given() -> None:
    series = np.array([1, 1, 1], np.int32)
    time_us = np.array([5, 5, 3], np.int64)
    assert first_of_each_key(series, time_us, np.array([1, 2])).tolist() == [2, 1]
    assert first_of_each_key(series, time_us, np.array([], np.int64)).tolist() == []


@given(points)
@settings(max_examples=200, deadline=None)
def test_fold_and_refold_equal_grouping_in_python(batch) -> None:
    batch = sorted(batch, key=lambda p: (p[0], p[1]))
    series, time_us, value = _columns(batch)
    minute = fold(series, time_us - time_us % MINUTE, value)
    hour = minute.refold(minute.bucket - minute.bucket % HOUR)
    for width, folded in ((MINUTE, minute), (HOUR, hour)):
        groups: dict[tuple[int, int], list[float]] = {}
        for s, t, v in batch:
            groups.setdefault((s, t - t % width), []).append(v)  # floor, as time_bucket
        keys = sorted(groups)
        assert list(zip(folded.series.tolist(), folded.bucket.tolist())) == keys
        assert folded.count.tolist() == [len(groups[k]) for k in keys]
        assert folded.min.tolist() == [min(groups[k]) for k in keys]
        assert folded.max.tolist() == [max(groups[k]) for k in keys]
        np.testing.assert_allclose(folded.sum, [sum(groups[k]) for k in keys], atol=1e-6)


def test_runs_give_first_and_last_index_of_each_run() -> None:
    starts, ends = runs(np.array([3, 3, 4, 7, 7, 7]))
    assert (starts.tolist(), ends.tolist()) == ([0, 2, 3], [1, 2, 5])
    starts, ends = runs(np.array([1, 1, 1]), np.array([1, 2, 2]))
    assert (starts.tolist(), ends.tolist()) == ([0, 1], [0, 2])

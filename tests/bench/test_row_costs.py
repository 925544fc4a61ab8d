"""bench.row_costs' batches: the points bench.fleet would publish, each once, with the
series ids of the seed's order and each device's first and last time."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench.row_costs import SECOND_US, Fleet


@pytest.mark.parametrize("size,points,batch_points", [(3, 61, 10), (1000, 50_000, 50_000),
                                                      (7, 35, 100)])
def test_batches_hold_each_point_of_the_known_rounds_once(size: int, points: int,
                                                          batch_points: int) -> None:
    fleet = Fleet(size, metrics=5, event_rate=2.0, start_us=10 * SECOND_US)
    batches = list(fleet.batches(points, batch_points, first_series=100))
    readings = -(-points // 5)
    assert [len(b.time_us) for b in batches[:-1]] == [batch_points // 5 * 5] * (len(batches) - 1)
    keys = Counter((d, m, t) for b in batches for d, m, t in zip(
        b.device.tolist(), b.metric.tolist(), b.time_us.tolist()))
    expected = Counter((i % size, m, 10 * SECOND_US + i // size * fleet.period_us)
                       for i in range(readings) for m in range(5))
    assert keys == expected
    for b in batches:
        assert (b.series_id == 100 + b.device * 5 + b.metric).all()


def test_a_batch_names_each_of_its_devices_once_with_its_first_and_last_time() -> None:
    fleet = Fleet(4, metrics=2, event_rate=4.0, start_us=0)  # a reading a second each
    (batch,) = fleet.batches(20, 100, first_series=1)  # 10 readings: rounds 0, 1 and half of 2
    ids, first, last = batch.devices
    assert ids == ["rows4-0000000", "rows4-0000001", "rows4-0000002", "rows4-0000003"]
    assert first == [0, 0, 0, 0]
    assert last == [2 * SECOND_US, 2 * SECOND_US, SECOND_US, SECOND_US]
    points = fleet.points_of(batch)
    assert points[0] == (0, "rows4-0000000", "m0", 0.0)
    assert len(points) == len(set((t, d, m) for t, d, m, _ in points)) == 20
    assert np.issubdtype(batch.value.dtype, np.floating)

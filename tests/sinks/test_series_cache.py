"""The sink's series cache: slots, marks and its bound."""
from __future__ import annotations

import numpy as np
import pytest

from sinks.series_cache import NOTHING_STORED, UNKNOWN, SeriesCache


def _points(*pairs: tuple[str, str]) -> list[tuple[int, str, str, float]]:
    return [(0, device, metric, 0.0) for device, metric in pairs]


def test_slots_give_each_series_its_id_and_an_unknown_mark_until_seeded() -> None:
    cache = SeriesCache(10)
    cache.add([("d1", "t", 41), ("d1", "h", 42), ("d2", "t", 7)])
    slots = cache.slots(_points(("d2", "t"), ("d1", "t"), ("d2", "t")))
    assert cache.ids[slots].tolist() == [7, 41, 7]
    assert (cache.marks[slots] == UNKNOWN).all()
    cache.seed(np.unique(slots), {"d1": 1_000})
    assert cache.marks[slots].tolist() == [NOTHING_STORED, 1_000, NOTHING_STORED]
    assert cache.devices_of(slots) == ["d2", "d1", "d2"]
    with pytest.raises(KeyError):
        cache.slots(_points(("d3", "t")))


def test_learn_keeps_the_newest_time_and_forget_makes_marks_unknown() -> None:
    cache = SeriesCache(10)
    cache.add([("d", "a", 1), ("d", "b", 2)])
    slots = cache.slots(_points(("d", "a"), ("d", "b"), ("d", "a")))
    cache.seed(slots, {"d": 50})
    cache.learn(cache.generation, slots, np.array([70, 10, 60]))
    assert cache.marks[slots].tolist() == [70, 50, 70]
    cache.forget(cache.generation, slots[:1])
    assert cache.marks[slots].tolist() == [UNKNOWN, 50, UNKNOWN]


def test_an_overflowing_cache_starts_over_and_ignores_its_old_slots() -> None:
    cache = SeriesCache(3)
    cache.add([("d", "a", 1), ("d", "b", 2)])
    old = cache.generation
    slots = cache.slots(_points(("d", "a")))
    assert cache.missing(_points(("d", "a"), ("e", "x"))) == {("e", "x")}
    # Two new series would make four: the cache forgets everything and wants all three.
    assert cache.missing(_points(("d", "a"), ("e", "x"), ("e", "y"))) == {
        ("d", "a"), ("e", "x"), ("e", "y")}
    assert len(cache) == 0 and cache.generation == old + 1
    cache.add([("e", "x", 9)])
    cache.learn(old, slots, np.array([5]))  # a write that began before: ignored
    cache.forget(old, slots)
    assert cache.marks[cache.slots(_points(("e", "x")))].tolist() == [UNKNOWN]


def test_the_arrays_grow_past_their_first_size() -> None:
    cache = SeriesCache(1_000)
    cache.add((f"d{n}", "m", n) for n in range(300))
    slots = cache.slots(_points(*((f"d{n}", "m") for n in range(300))))
    assert cache.ids[slots].tolist() == list(range(300))
    assert len(cache) == 300
    with pytest.raises(ValueError):
        SeriesCache(0)

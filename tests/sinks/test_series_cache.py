"""The sink's series cache: slots, marks, its memory bound and its compact tables."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.series_cache import DENSE_METRICS, NOTHING_STORED, UNKNOWN, SeriesCache

ROOMY = 1 << 30


def _points(*pairs: tuple[str, str]) -> list[tuple[int, str, str, float]]:
    return [(0, device, metric, 0.0) for device, metric in pairs]


def test_slots_give_each_series_its_id_and_an_unknown_mark_until_seeded() -> None:
    cache = SeriesCache(ROOMY)
    cache.add([("d1", "t", 41), ("d1", "h", 42), ("d2", "t", 7)])
    slots = cache.slots(_points(("d2", "t"), ("d1", "t"), ("d2", "t")))
    assert cache.ids[slots].tolist() == [7, 41, 7]
    assert (cache.marks[slots] == UNKNOWN).all()
    cache.seed(np.unique(slots), {"d1": 1_000})
    assert cache.marks[slots].tolist() == [NOTHING_STORED, 1_000, NOTHING_STORED]
    assert cache.devices_of(slots) == ["d2", "d1", "d2"]
    for unknown in [("d3", "t"), ("d1", "x"), ("d2", "h")]:
        with pytest.raises(KeyError):
            cache.slots(_points(unknown))


def test_learn_keeps_the_newest_time_and_forget_makes_marks_unknown() -> None:
    cache = SeriesCache(ROOMY)
    cache.add([("d", "a", 1), ("d", "b", 2)])
    slots = cache.slots(_points(("d", "a"), ("d", "b"), ("d", "a")))
    cache.seed(slots, {"d": 50})
    cache.learn(cache.generation, slots, np.array([70, 10, 60]))
    assert cache.marks[slots].tolist() == [70, 50, 70]
    cache.forget(cache.generation, slots[:1])
    assert cache.marks[slots].tolist() == [UNKNOWN, 50, UNKNOWN]


def test_the_cache_starts_over_only_past_its_budget_and_ignores_its_old_slots() -> None:
    two_devices = SeriesCache(ROOMY)
    two_devices.add([("d", "a", 1), ("d", "b", 2), ("e", "a", 3)])
    cache = SeriesCache(two_devices.nbytes)  # room for these two devices, not three
    cache.add([("d", "a", 1), ("d", "b", 2)])
    old = cache.generation
    slots = cache.slots(_points(("d", "a")))
    assert cache.missing(_points(("d", "a"), ("e", "a"))) == {("e", "a")}
    assert cache.resets == 0
    cache.add([("e", "a", 3)])
    assert cache.nbytes == cache.max_bytes
    # A third device would not fit: the cache forgets everything and wants all of them.
    assert cache.missing(_points(("d", "a"), ("f", "a"))) == {("d", "a"), ("f", "a")}
    assert len(cache) == 0 and cache.generation == old + 1 and cache.resets == 1
    cache.add([("f", "a", 9)])
    cache.learn(old, slots, np.array([5]))  # a write that began before: ignored
    cache.forget(old, slots)
    assert cache.marks[cache.slots(_points(("f", "a")))].tolist() == [UNKNOWN]
    with pytest.raises(ValueError):
        SeriesCache(0)


def test_a_batch_larger_than_the_budget_is_still_cached_until_the_next_one() -> None:
    cache = SeriesCache(1)
    pairs = [(f"d{n}", "m") for n in range(100)]
    assert cache.missing(_points(*pairs)) == set(pairs)
    cache.add((d, m, n) for n, (d, m) in enumerate(pairs))
    assert cache.ids[cache.slots(_points(*pairs))].tolist() == list(range(100))
    assert cache.resets == 1


def test_the_estimate_holds_the_budget_and_grows_with_the_series() -> None:
    budget = 2 << 20
    cache = SeriesCache(budget)
    for step in range(40):
        points = _points(*((f"dev-{step:03d}-{n:04d}", m) for n in range(500)
                           for m in ("t", "h", "p")))
        missing = cache.missing(points)
        cache.add((d, m, 0) for d, m in missing)
        cache.slots(points)
        assert cache.nbytes <= budget
    assert cache.resets >= 1
    # Per series, with 3 metrics a device: well under the budget's 2 MiB for 20k series.
    small = SeriesCache(ROOMY)
    small.add((f"dev-{n:07d}", m, n) for n in range(20_000) for m in ("t", "h", "p"))
    assert small.nbytes / len(small) < 100


def test_many_metric_names_cost_per_series_not_per_device_and_metric() -> None:
    cache = SeriesCache(ROOMY)
    # 3,000 metric names, each device reporting 3 of them.
    triples = [(f"d{n}", f"m{(n * 7 + k) % 3000}", 3 * n + k)
               for n in range(3_000) for k in range(3)]
    cache.add(triples)
    points = _points(*((d, m) for d, m, _ in triples))
    assert cache.ids[cache.slots(points)].tolist() == [i for _, _, i in triples]
    assert cache.devices_of(cache.slots(points)) == [d for d, _, _ in triples]
    assert cache._dense.shape[1] == DENSE_METRICS
    # 3,000 devices x 3,000 names would be 36 MB as a dense table.
    assert cache.nbytes < 2 << 20
    with pytest.raises(KeyError):
        cache.slots(_points(("d0", "m2999")))


_names = st.sampled_from([f"d{n}" for n in range(40)])
_metrics = st.sampled_from([f"m{n}" for n in range(DENSE_METRICS + 8)])
_operation = st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(_names, _metrics), max_size=30)),
    st.tuples(st.just("missing"), st.lists(st.tuples(_names, _metrics), max_size=30)),
    st.tuples(st.just("learn"), st.lists(st.tuples(_names, _metrics), max_size=10)),
)


@settings(max_examples=150, deadline=None)
@given(budget=st.sampled_from([1, 6_000, 20_000, ROOMY]), operations=st.lists(_operation))
def test_the_cache_behaves_as_a_dict_of_pairs(budget: int, operations: list) -> None:
    cache = SeriesCache(budget)
    model: dict[tuple[str, str], list[int]] = {}  # pair -> [series id, mark]
    next_id = 0
    for kind, pairs in operations:
        if kind == "add":
            triples = []
            for pair in pairs:
                next_id += 1
                triples.append((*pair, next_id))
                if pair not in model:
                    model[pair] = [next_id, UNKNOWN]
            cache.add(triples)
        elif kind == "missing":
            generation = cache.generation
            missing = cache.missing(_points(*pairs))
            if cache.generation != generation:
                model.clear()
                assert missing == set(pairs)
            else:
                assert missing == {p for p in pairs if p not in model}
            triples = []
            for pair in sorted(missing):  # cached as the sink does
                next_id += 1
                triples.append((*pair, next_id))
                model[pair] = [next_id, UNKNOWN]
            cache.add(triples)
            if missing and cache.generation == generation:
                assert cache.nbytes <= budget
        else:
            cached = [p for p in pairs if p in model]
            slots = cache.slots(_points(*cached))
            times = np.arange(len(cached), dtype=np.int64)
            cache.seed(np.unique(slots), {})
            cache.learn(cache.generation, slots, times)
            for pair in cached:
                model[pair][1] = NOTHING_STORED
            for pair, time in zip(cached, times.tolist()):
                model[pair][1] = max(model[pair][1], time)
        assert len(cache) == len(model)
        everything = list(model)
        slots = cache.slots(_points(*everything))
        assert len(set(slots.tolist())) == len(everything)
        assert cache.ids[slots].tolist() == [model[p][0] for p in everything]
        assert cache.marks[slots].tolist() == [model[p][1] for p in everything]
        assert cache.devices_of(slots) == [d for d, _ in everything]
        for pair in set(pairs) - set(model):
            with pytest.raises(KeyError):
                cache.slots(_points(pair))

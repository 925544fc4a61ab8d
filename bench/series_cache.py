"""The sink's series cache at a large fleet: bytes per series and ns per point of ``slots``.

Fills a ``sinks.series_cache.SeriesCache`` with ``--devices`` devices x ``--metrics``
metrics (ids like ``dev-0000001``, each triple with string objects of its own, as database
rows have), its bytes traced by ``tracemalloc``; then times ``slots()`` on batches of
``--batch`` points of random devices (fresh strings, as decoded from Kafka), ``--repeat``
times, and prints the medians. No database, no broker.

    .venv/bin/python -m bench.series_cache --devices 1000000
    git show HEAD~1:sinks/series_cache.py > /tmp/old_cache.py
    .venv/bin/python -m bench.series_cache --devices 1000000 --module /tmp/old_cache.py

``--module`` loads another version of the module from a file (an older one takes a
capacity in series where the current one takes bytes: both are given a bound too large
to be reached).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import time
import tracemalloc
from types import ModuleType
from typing import Any, Iterator

METRICS = ["temperature", "humidity", "pressure", "battery", "signal", "co2", "voltage",
           "current"]
NO_BOUND = 1 << 40


def load(path: str | None) -> ModuleType:
    if path is None:
        import sinks.series_cache
        return sinks.series_cache
    spec = importlib.util.spec_from_file_location("series_cache_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh(text: str) -> str:
    """An equal string that is another object."""
    return text[:-1] + text[-1]


def triples(devices: int, metrics: int) -> Iterator[tuple[str, str, int]]:
    series_id = 0
    for device in range(devices):
        for metric in METRICS[:metrics]:
            series_id += 1
            yield f"dev-{device:07d}", fresh(metric), series_id


def batch(devices: int, metrics: int, size: int, rng: random.Random) -> list[Any]:
    chosen = rng.sample(range(devices), size // metrics)
    return [(0, f"dev-{device:07d}", fresh(metric), 0.0)
            for device in chosen for metric in METRICS[:metrics]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=5, choices=range(1, len(METRICS) + 1))
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--module", help="a series_cache.py to measure instead")
    args = parser.parse_args()
    module = load(args.module)
    series = args.devices * args.metrics

    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    cache = module.SeriesCache(NO_BOUND)
    cache.add(triples(args.devices, args.metrics))
    fill_s = time.perf_counter() - started
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(cache) == series

    rng = random.Random(1)
    per_point = []
    for _ in range(args.repeat):
        points = batch(args.devices, args.metrics, args.batch, rng)
        started = time.perf_counter()
        cache.slots(points)
        per_point.append((time.perf_counter() - started) / len(points) * 1e9)
    print(f"{series:,} series: {traced / series:.1f} bytes/series "
          f"({traced / 2**20:.0f} MiB; filled in {fill_s:.1f} s under tracemalloc), "
          f"slots() {statistics.median(per_point):.0f} ns/point "
          f"(median of {args.repeat} batches of {args.batch:,}; "
          f"{min(per_point):.0f}-{max(per_point):.0f})")


if __name__ == "__main__":
    main()

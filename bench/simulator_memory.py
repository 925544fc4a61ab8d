"""What the simulator's fleet costs without a broker: memory per device and readings/s.

Builds a ``producers.simulator.Fleet`` of ``--devices`` devices x ``--metrics`` metrics, then
generates ``--readings`` readings in calls of ``--call`` readings (as ``run_fleet`` does at
``--rate 0``), each call's readings dropped after it. Reports the process's resident memory
before building, after building and after generating (``psutil``), its peak (``ru_maxrss``),
the bytes per device the fleet holds (resident memory after generating, when every page of its
state has been written, less the memory before building, per device), and readings generated
per second. Nothing is sent anywhere.

    .venv/bin/python -m bench.simulator_memory   # writes bench/results/simulator_memory.json

Each run is a process of its own (the peak RSS of a process never comes down). It also runs
against an older ``Fleet`` that has only ``next_reading()``, for before/after figures.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson
import psutil

from producers.simulator import Fleet, FleetConfig

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "bench" / "results" / "simulator_memory.json"
MB = 1024 * 1024


def peak_rss() -> int:
    """The process's peak resident memory so far, in bytes (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def generator(fleet: Fleet) -> Callable[[int], list[dict[str, object]]]:
    """``fleet.next_readings``, or the same made of ``next_reading()`` for an older Fleet."""
    many = getattr(fleet, "next_readings", None)
    if many is not None:
        return many
    return lambda n: [fleet.next_reading() for _ in range(n)]


def commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def measure(devices: int, metrics: int, readings: int, call: int) -> dict[str, Any]:
    gc.collect()
    before = current_rss()
    started = time.perf_counter()
    fleet = Fleet(FleetConfig(devices=devices, metrics=metrics, seed=1))
    build_s = time.perf_counter() - started
    gc.collect()
    after_build = current_rss()
    peak_after_build = peak_rss()
    generate = generator(fleet)
    started = time.perf_counter()
    done = 0
    while done < readings:
        batch = generate(min(call, readings - done))
        done += len(batch)
        del batch
    generate_s = time.perf_counter() - started
    gc.collect()
    after_generate = current_rss()  # every page of the fleet's state touched by now
    return {
        "devices": devices,
        "metrics": metrics,
        "readings": readings,
        "readings_per_call": call,
        "rss_before_build_mb": round(before / MB, 1),
        "rss_after_build_mb": round(after_build / MB, 1),
        "peak_rss_after_build_mb": round(peak_after_build / MB, 1),
        "rss_after_generate_mb": round(after_generate / MB, 1),
        "peak_rss_mb": round(peak_rss() / MB, 1),
        "bytes_per_device": round((after_generate - before) / devices, 1),
        "build_s": round(build_s, 2),
        "generate_s": round(generate_s, 2),
        "readings_per_s": round(readings / generate_s),
        "points_per_s": round(readings * metrics / generate_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--call", type=int, default=1000, help="readings per call")
    parser.add_argument("--output", type=Path, default=OUTPUT,
                        help="where the JSON goes ('-': print it only)")
    args = parser.parse_args()
    result = measure(args.devices, args.metrics, args.readings, args.call)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": commit(),
        "command": " ".join(["python -m bench.simulator_memory", *sys.argv[1:]]),
        **result,
        "finished_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    print(text.decode())
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(text + b"\n")
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()

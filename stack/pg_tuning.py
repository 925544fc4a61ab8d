#!/usr/bin/env python3
"""stack/pg_tuning.py -- PostgreSQL settings computed from this host (RAM, CPUs).

Prints postgresql.conf lines on stdout; stack/up.sh writes them into the local
cluster's conf.d. Only the standard library is used. For the design's reference host
(`--ram-mb 65536 --cpus 20`) it prints exactly the design's table, which
deploy/postgresql.conf carries; other hosts get the same rules scaled (SSD storage
assumed):

  shared_buffers        RAM / 4              effective_cache_size  RAM * 3 / 4
  maintenance_work_mem  RAM / 16, max 2GB    work_mem  (RAM - shared_buffers)
                                             / (3 * active connections), 4MB to 256MB
  wal_buffers           shared_buffers / 256, 16MB to 64MB (never above 1/32 of it)
  max_wal_size          RAM / 4, 1GB to 16GB min_wal_size  max_wal_size / 4
  max_parallel_workers  CPUs - CPUs // 5     per gather, maintenance  half of that, 1 to 8
  max_worker_processes  3 + TimescaleDB background workers + max_parallel_workers

RAM is the smaller of /proc/meminfo's MemTotal and the cgroup memory limit; CPUs
the smaller of the affinity mask and the cgroup CPU quota. Both can be overridden
(--ram-mb, --cpus) to see what another host would get.
"""
from __future__ import annotations

import argparse
import math
import os

MB = 1024 * 1024
GB = 1024 * MB


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_ram_bytes() -> int:
    """Physical RAM, or the cgroup memory limit when that is lower."""
    ram = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            ram = int(line.split()[1]) * 1024
    if ram is None:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read(path)
        if value and value.isdigit() and 0 < int(value) < ram:
            ram = int(value)
    return ram


def host_cpus() -> int:
    """CPUs this process may use, or the cgroup CPU quota when that is lower."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = None
    value = _read("/sys/fs/cgroup/cpu.max")
    if value and not value.startswith("max"):
        q, p = value.split()[:2]
        quota = int(q) / int(p)
    else:
        quota_us = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        period_us = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if quota_us and period_us and quota_us.lstrip("-").isdigit() and int(quota_us) > 0:
            quota = int(quota_us) / int(period_us)
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def size(n_bytes: float) -> str:
    """A memory setting: whole GB when exact, else whole MB (at least 1MB)."""
    n = int(n_bytes)
    if n >= GB and n % GB == 0:
        return f"{n // GB}GB"
    return f"{max(1, n // MB)}MB"


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def settings(ram_bytes: int, cpus: int, active_connections: int = 60,
             ts_background_workers: int = 16) -> list[tuple[str, str]]:
    """(name, value) pairs for a host with this RAM and these CPUs.

    active_connections: server connections that run queries at once (pgBouncer's
    default_pool_size + reserve_pool_size); each may use a few work_mem at a time.
    """
    shared_buffers = max(128 * MB, ram_bytes // 4)
    effective_cache = max(256 * MB, ram_bytes * 3 // 4)
    maintenance = _clamp(ram_bytes // 16, 64 * MB, 2 * GB)
    work_mem = _clamp((ram_bytes - shared_buffers) / (3 * active_connections), 4 * MB, 256 * MB)
    wal_buffers = _clamp(shared_buffers // 256, min(16 * MB, shared_buffers // 32), 64 * MB)
    max_wal = _clamp(ram_bytes // 4, 1 * GB, 16 * GB)

    parallel = max(1, cpus - cpus // 5)
    per_gather = max(1, min(8, parallel // 2))

    return [
        ("shared_buffers", size(shared_buffers)),
        ("effective_cache_size", size(effective_cache)),
        ("maintenance_work_mem", size(maintenance)),
        ("work_mem", size(work_mem)),
        ("wal_buffers", size(wal_buffers)),
        ("min_wal_size", size(max_wal // 4)),
        ("max_wal_size", size(max_wal)),
        ("wal_compression", "on"),
        ("checkpoint_completion_target", "0.9"),
        ("random_page_cost", "1.1"),
        ("effective_io_concurrency", "200"),
        ("max_worker_processes", str(3 + ts_background_workers + parallel)),
        ("max_parallel_workers", str(parallel)),
        ("max_parallel_workers_per_gather", str(per_gather)),
        ("max_parallel_maintenance_workers", str(per_gather)),
        ("timescaledb.max_background_workers", str(ts_background_workers)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-mb", type=int, help="pretend the host has this much RAM")
    parser.add_argument("--cpus", type=int, help="pretend the host has this many CPUs")
    parser.add_argument("--active-connections", type=int, default=60,
                        help="server connections running queries at once (default 60: "
                             "pgBouncer's pool of 50 + 10 reserve)")
    parser.add_argument("--ts-background-workers", type=int, default=16)
    args = parser.parse_args()

    ram = args.ram_mb * MB if args.ram_mb else host_ram_bytes()
    cpus = args.cpus or host_cpus()
    print(f"# computed by stack/pg_tuning.py for {ram // MB} MB RAM, {cpus} CPUs")
    for name, value in settings(ram, cpus, args.active_connections, args.ts_background_workers):
        print(f"{name} = {value}")


if __name__ == "__main__":
    main()

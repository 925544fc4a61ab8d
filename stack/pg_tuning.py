#!/usr/bin/env python3
"""stack/pg_tuning.py -- PostgreSQL settings computed from this host (RAM, CPUs).

Prints postgresql.conf lines on stdout; stack/up.sh writes them into the local
cluster's conf.d. Only the standard library is used. Rules (PGTune / timescaledb-tune
style, SSD storage assumed):

  shared_buffers        25 % of RAM          effective_cache_size  75 % of RAM
  maintenance_work_mem  RAM / 16, max 2 GB   work_mem  (RAM - shared_buffers)
                                             / (3 * max_connections) / workers per gather,
                                             between 4 MB and 256 MB
  parallel workers      from the CPU count   max_worker_processes  >= TimescaleDB
                                             background workers + parallel workers + 3

RAM is the smaller of /proc/meminfo's MemTotal and the cgroup memory limit; CPUs
the smaller of the affinity mask and the cgroup CPU quota. Both can be overridden
(--ram-mb, --cpus) to see what another host would get.
"""

import argparse
import math
import os

MB = 1024 * 1024


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_ram_bytes():
    ram = None
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            ram = int(line.split()[1]) * 1024
    if ram is None:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read(path)
        if value and value.isdigit() and 0 < int(value) < ram:
            ram = int(value)
    return ram


def host_cpus():
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
        q = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        p = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q and p and q.lstrip("-").isdigit() and int(q) > 0:
            quota = int(q) / int(p)
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def mb(n_bytes):
    return f"{max(1, int(n_bytes // MB))}MB"


def settings(ram_bytes, cpus, max_connections=200, ts_background_workers=8):
    shared_buffers = max(128 * MB, ram_bytes // 4)
    effective_cache = max(256 * MB, ram_bytes * 3 // 4)
    maintenance = min(2048 * MB, max(64 * MB, ram_bytes // 16))

    per_gather = max(1, cpus // 2)
    parallel = max(1, cpus)
    parallel_maint = max(1, min(4, cpus // 2))
    worker_processes = ts_background_workers + parallel + 3

    work_mem = (ram_bytes - shared_buffers) / (max_connections * 3) / per_gather
    work_mem = min(256 * MB, max(4 * MB, work_mem))

    return [
        ("shared_buffers", mb(shared_buffers)),
        ("effective_cache_size", mb(effective_cache)),
        ("maintenance_work_mem", mb(maintenance)),
        ("work_mem", mb(work_mem)),
        ("wal_buffers", "16MB"),
        ("min_wal_size", "1GB"),
        ("max_wal_size", "4GB"),
        ("checkpoint_completion_target", "0.9"),
        ("random_page_cost", "1.1"),
        ("effective_io_concurrency", "200"),
        ("max_worker_processes", str(worker_processes)),
        ("max_parallel_workers", str(parallel)),
        ("max_parallel_workers_per_gather", str(per_gather)),
        ("max_parallel_maintenance_workers", str(parallel_maint)),
        ("timescaledb.max_background_workers", str(ts_background_workers)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-mb", type=int, help="pretend the host has this much RAM")
    parser.add_argument("--cpus", type=int, help="pretend the host has this many CPUs")
    parser.add_argument("--max-connections", type=int, default=200)
    parser.add_argument("--ts-background-workers", type=int, default=8)
    args = parser.parse_args()

    ram = args.ram_mb * MB if args.ram_mb else host_ram_bytes()
    cpus = args.cpus or host_cpus()
    print(f"# computed by stack/pg_tuning.py for {ram // MB} MB RAM, {cpus} CPUs")
    for name, value in settings(ram, cpus, args.max_connections, args.ts_background_workers):
        print(f"{name} = {value}")


if __name__ == "__main__":
    main()

"""Figures of the worker's host for ``/metrics``, read with psutil at scrape time.

CPU time by mode, memory, disk I/O and network bytes of the machine, and the space of the
file systems holding ``DISK_PATHS`` (the worker's data directory by default; in the
compose file also the database's volume). Counters are the host's own totals since boot,
so Prometheus' ``rate()`` works on them across worker restarts.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class HostCollector(Collector):
    """``devicestream_host_*``: CPU, memory, disk space of ``paths``, disk I/O, network."""

    def __init__(self, paths: Sequence[str]) -> None:
        self._paths = list(paths)

    def collect(self) -> Iterator[Metric]:
        yield _counter("devicestream_host_cpu_seconds", "CPU time of the host's cores by mode",
                       "mode", psutil.cpu_times()._asdict())
        memory = psutil.virtual_memory()
        ram = GaugeMetricFamily("devicestream_host_memory_bytes", "Host memory",
                                labels=["state"])
        ram.add_metric(["total"], memory.total)
        ram.add_metric(["available"], memory.available)
        yield ram
        free = GaugeMetricFamily("devicestream_host_disk_free_bytes",
                                 "Space left to unprivileged users on the file system of a "
                                 "watched path (DISK_PATHS)", labels=["path"])
        size = GaugeMetricFamily("devicestream_host_disk_size_bytes",
                                 "Size of the file system of a watched path", labels=["path"])
        for path in self._paths:
            try:
                usage = psutil.disk_usage(path)
            except OSError:  # not there (yet): no figure rather than a wrong one
                continue
            free.add_metric([path], usage.free)
            size.add_metric([path], usage.total)
        yield from (free, size)
        disks = psutil.disk_io_counters()
        if disks is not None:
            yield _counter("devicestream_host_disk_io_bytes",
                           "Bytes read and written by the host's disks", "direction",
                           {"read": disks.read_bytes, "written": disks.write_bytes})
        network = psutil.net_io_counters()
        yield _counter("devicestream_host_network_bytes",
                       "Bytes sent and received by the host's interfaces", "direction",
                       {"sent": network.bytes_sent, "received": network.bytes_recv})


def _counter(name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value_label, value in values.items():
        family.add_metric([value_label], value)
    return family

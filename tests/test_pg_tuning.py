"""stack/pg_tuning.py: the design's table for its 64 GB / 20-core host, scaled for others."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docker_compose import DESIGN_TUNING, POSTGRESQL_CONF, parse_postgresql_conf, \
    size_in_bytes

ROOT = Path(__file__).resolve().parents[1]
TUNER = ROOT / "stack" / "pg_tuning.py"
MB = 1024 * 1024


def _load_tuner():
    spec = importlib.util.spec_from_file_location("pg_tuning", TUNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pg_tuning = _load_tuner()


def run_tuner(*args: str) -> dict[str, str]:
    """The settings the command line prints, as stack/up.sh reads them."""
    out = subprocess.run([sys.executable, str(TUNER), *args], check=True,
                         capture_output=True, text=True).stdout
    pairs = (line.split("=", 1) for line in out.splitlines() if not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def tuned(ram_mb: int, cpus: int) -> dict[str, str]:
    return dict(pg_tuning.settings(ram_mb * MB, cpus, ts_background_workers=8))


def test_the_reference_host_gets_exactly_the_design_table():
    printed = run_tuner("--ram-mb", "65536", "--cpus", "20")
    design = {key: value for key, value in DESIGN_TUNING.items() if key != "wal_level"}
    assert {key: printed.get(key) for key in design} == design


def test_deploy_postgresql_conf_is_what_the_tuner_prints_for_the_reference_host():
    conf = parse_postgresql_conf(POSTGRESQL_CONF.read_text(encoding="utf-8"))
    printed = run_tuner("--ram-mb", "65536", "--cpus", "20", "--ts-background-workers",
                        conf["timescaledb.max_background_workers"])
    assert {key: conf.get(key) for key in printed} == printed


@pytest.mark.parametrize("ram_mb, cpus", [(512, 1), (2048, 1), (24576, 2), (16384, 8)])
def test_small_hosts_stay_within_their_memory_and_cores(ram_mb, cpus):
    conf = tuned(ram_mb, cpus)
    ram = ram_mb * MB
    assert size_in_bytes(conf["shared_buffers"]) <= ram // 4
    assert size_in_bytes(conf["effective_cache_size"]) < ram
    # Every pooled connection sorting with work_mem three times still fits beside the cache.
    used = size_in_bytes(conf["shared_buffers"]) + 60 * 3 * size_in_bytes(conf["work_mem"])
    assert used <= ram or conf["work_mem"] == "4MB"
    assert size_in_bytes(conf["wal_buffers"]) <= size_in_bytes(conf["shared_buffers"]) // 32
    assert size_in_bytes(conf["min_wal_size"]) < size_in_bytes(conf["max_wal_size"])
    assert 1 <= int(conf["max_parallel_workers"]) <= cpus
    assert 1 <= int(conf["max_parallel_workers_per_gather"]) <= int(conf["max_parallel_workers"])
    assert int(conf["max_worker_processes"]) == 3 + 8 + int(conf["max_parallel_workers"])


def test_this_machines_size_gets_scaled_not_design_values():
    conf = tuned(24576, 2)
    assert conf["shared_buffers"] == "6GB" and conf["effective_cache_size"] == "18GB"
    assert conf["work_mem"] == "102MB"
    assert conf["maintenance_work_mem"] == "1536MB"
    assert (conf["min_wal_size"], conf["max_wal_size"]) == ("1536MB", "6GB")
    assert conf["wal_buffers"] == "24MB"
    assert (conf["max_parallel_workers"], conf["max_parallel_workers_per_gather"]) == ("2", "1")


def test_settings_grow_with_the_host_up_to_the_design_caps():
    small, reference, huge = tuned(8192, 4), tuned(65536, 20), tuned(262144, 64)
    for key in ("shared_buffers", "effective_cache_size", "work_mem", "max_wal_size"):
        assert size_in_bytes(small[key]) < size_in_bytes(reference[key]), key
    for key in ("work_mem", "maintenance_work_mem", "wal_buffers", "max_wal_size"):
        assert huge[key] == reference[key], key  # capped at the design's value
    assert huge["max_parallel_workers_per_gather"] == "8"
    assert int(huge["max_parallel_workers"]) > int(reference["max_parallel_workers"])

"""A worker's start-up does not grow with the fleet: it does not read the devices table."""
from __future__ import annotations

import asyncio

import pytest

from tests.stack import (
    SETTINGS,
    PrivateBroker,
    db_connect,
    unique,
    wait_for,
)
from tests.web.worker_web import get

pytestmark = pytest.mark.integration

SEEDED_DEVICES = 200_000

_TABLE_READS = """
SELECT seq_scan, seq_tup_read, coalesce(idx_tup_fetch, 0) AS idx_tup_fetch
FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = 'devices'
"""


async def _devices_reads() -> dict[str, int]:
    conn = await db_connect()
    try:
        return dict(await conn.fetchrow(_TABLE_READS))
    finally:
        await conn.close()


async def test_a_starting_worker_reads_no_device_rows(private_broker: PrivateBroker,
                                                      start_worker) -> None:
    prefix = unique("startup-seed-")
    conn = await db_connect(SETTINGS.as_owner())  # the workers' role deletes no device
    try:
        await conn.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen) "
            "SELECT $1 || i, now() - interval '1 day', now() - interval '1 hour' "
            "FROM generate_series(1, $2) AS i", prefix, SEEDED_DEVICES)
        try:
            before = await _devices_reads()
            # Maintenance (hourly, on the leader) reads the devices table on purpose: off.
            worker = start_worker("startup", MAINTENANCE_INTERVAL="0",
                                  **private_broker.worker_env())

            async def ready() -> bool:
                status, body = await get(worker, "/health/ready")
                return status == 200 and body["ready"]
            await wait_for(ready, 90, "the worker to be ready")
            await asyncio.sleep(2)  # backends flush their table statistics within a second
            after = await _devices_reads()
        finally:
            await conn.execute("DELETE FROM devices WHERE device_id LIKE $1 || '%'", prefix)
    finally:
        await conn.close()
    read = {key: after[key] - before[key] for key in before}
    assert read["seq_tup_read"] < SEEDED_DEVICES and read["idx_tup_fetch"] < SEEDED_DEVICES, (
        f"start-up read the devices table: {read}")

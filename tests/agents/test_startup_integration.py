"""A worker's start-up does not grow with the fleet: it does not read the devices table.

It runs on a database of its own: the table statistics it reads count every session's
reads, and other tests run beside it."""
from __future__ import annotations

import asyncio

import pytest

from streams.settings import Settings
from tests.stack import (
    PrivateBroker,
    PrivateDatabase,
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


async def _devices_reads(settings: Settings) -> dict[str, int]:
    conn = await db_connect(settings)
    try:
        return dict(await conn.fetchrow(_TABLE_READS))
    finally:
        await conn.close()


async def test_a_starting_worker_reads_no_device_rows(private_broker: PrivateBroker,
                                                      private_database: PrivateDatabase,
                                                      start_worker) -> None:
    settings = private_database.settings
    conn = await db_connect(settings.as_owner())  # the workers' role adds no device
    try:
        await conn.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen) "
            "SELECT $1 || i, now() - interval '1 day', now() - interval '1 hour' "
            "FROM generate_series(1, $2) AS i", unique("startup-seed-"), SEEDED_DEVICES)
    finally:
        await conn.close()
    before = await _devices_reads(settings)
    # Maintenance (hourly, on the leader) reads the devices table on purpose: off.
    worker = start_worker("startup", MAINTENANCE_INTERVAL="0", **private_broker.worker_env(),
                          **private_database.worker_env())

    async def ready() -> bool:
        status, body = await get(worker, "/health/ready")
        return status == 200 and body["ready"]
    await wait_for(ready, 90, "the worker to be ready")
    await asyncio.sleep(2)  # backends flush their table statistics within a second
    after = await _devices_reads(settings)
    read = {key: after[key] - before[key] for key in before}
    assert read["seq_tup_read"] < SEEDED_DEVICES and read["idx_tup_fetch"] < SEEDED_DEVICES, (
        f"start-up read the devices table: {read}")

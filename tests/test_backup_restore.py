"""Backups and point-in-time restore of the local stack with pgBackRest (``make backup``,
``make restore``, ``make restore-stop``), against the real cluster and its WAL archive."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiokafka.structs import TopicPartition

from sinks.maintenance import maintain
from sinks.postgres import create_pool
from sinks.timescale import TimescaleSink
from streams.settings import Settings
from streams.topics import device_topic
from tests.stack import (
    REPO,
    SETTINGS,
    Stream,
    aggregate_mismatches,
    assert_exactly_once,
    commit_offsets,
    committed_offsets,
    compress_chunks_holding,
    count_rows,
    db_connect,
    fleet,
    free_port,
    publish_readings,
    rows_at_least,
    run_replay,
    stored_points,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("pgbackrest_turn")]

STEP_MS = 1000
PER_PHASE = 150  # readings per device and phase


def make(target: str, timeout: float = 900, **variables: str) -> subprocess.CompletedProcess[str]:
    """``make -s TARGET VAR=value...`` in the repository; output kept for the assertions."""
    return subprocess.run(
        ["make", "-s", target, *(f"{k}={v}" for k, v in variables.items())],
        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def backup(**variables: str) -> dict[str, str]:
    """Run ``make backup`` (must succeed); its printed fields by name."""
    done = make("backup", **variables)
    assert done.returncode == 0, done.stderr
    return dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())


def repository_info() -> dict[str, Any]:
    state = REPO / ".stack"
    state = Path((state / "pgstate").resolve()) if (state / "pgstate").exists() else state
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "pgbackrest",
         f"--config={state / 'pgbackrest' / 'pgbackrest.conf'}", "--stanza=devicestream",
         "info", "--output=json"], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)[0]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


async def database_now() -> datetime:
    conn = await db_connect()
    try:
        return await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()


@contextmanager
def restored(moment: datetime) -> Iterator[Settings]:
    """A cluster restored to ``moment`` by ``make restore``, removed afterwards."""
    port = free_port()
    done = make("restore", TIME=rfc3339(moment), PORT=str(port))
    try:
        assert done.returncode == 0, done.stderr
        url = done.stdout.strip().splitlines()[-1]
        assert url == f"postgresql://devicestream@127.0.0.1:{port}/devicestream"
        yield replace(SETTINGS, db=replace(SETTINGS.db, host="127.0.0.1", port=port,
                                           statement_cache=True))
    finally:
        make("restore-stop", PORT=str(port))


async def device_rows(devices: list[str], settings: Settings) -> list[str]:
    conn = await db_connect(settings)
    try:
        return sorted(await conn.fetchval(
            "SELECT coalesce(array_agg(device_id), '{}') FROM devices WHERE device_id = ANY($1)",
            devices))
    finally:
        await conn.close()


async def test_backup_while_a_worker_ingests_loses_and_duplicates_nothing(start_worker) -> None:
    devices, device_filter = fleet("hotbackup-", 6)
    start_worker("hotbackup", DEVICE_FILTER=device_filter)
    stream = Stream(devices, readings_per_s=100, seconds=60)
    publishing = asyncio.create_task(stream.run())
    await wait_for(lambda: rows_at_least(devices, 200), 60, "the worker ingesting")
    rows_before = await count_rows(devices)
    printed = await asyncio.to_thread(backup)
    rows_after = await count_rows(devices)
    await publishing
    assert rows_before < rows_after < stream.points, "rows were stored during the backup"
    assert printed["type"] in ("full", "incr")
    assert printed["label"] in {b["label"] for b in repository_info()["backup"]}
    conn = await db_connect()
    try:  # recorded for the workers' backup age
        recorded = await conn.fetchrow(
            "SELECT type, finished_at FROM storage.backups WHERE label = $1", printed["label"])
    finally:
        await conn.close()
    assert recorded is not None and recorded["type"] == printed["type"]
    assert recorded["finished_at"] == datetime.fromisoformat(printed["ended"])
    await assert_exactly_once(stream)


async def test_restore_to_a_time_then_replay_gives_back_every_reading_exactly_once(
        start_worker) -> None:
    """A stored, backup, B stored, T noted, C stored (with a device new in C). The cluster
    restored to T holds exactly A and B; ``replay --since T`` and a worker writing into the
    restored cluster bring C back, each reading once."""
    devices, device_filter = fleet("pitr-", 4)
    late_device = f"{device_filter.replace(chr(92), '')}late"
    everyone = devices + [late_device]
    worker = start_worker("pitr", DEVICE_FILTER=device_filter)
    start_ms = int(time.time() * 1000) - 3 * 3600 * 1000
    phase_ms = PER_PHASE * STEP_MS

    async def phase(number: int, who: list[str], expected_rows: int) -> None:
        await publish_readings(who, PER_PHASE, step_ms=STEP_MS,
                               start_ms=start_ms + number * phase_ms)
        await wait_for(lambda: rows_at_least(everyone, expected_rows), 60,
                       f"phase {number} stored")

    points = len(devices) * PER_PHASE * 2
    await phase(0, devices, points)                        # A
    await asyncio.to_thread(backup)
    await phase(1, devices, 2 * points)                    # B
    moment = await database_now()                          # T
    total = 3 * points + PER_PHASE * 2
    await phase(2, everyone, total)                        # C

    everything = await stored_points(everyone)
    before_c = start_ms + 2 * phase_ms
    expected = Counter({p: n for p, n in everything.items() if p[2] < before_c})
    assert sum(expected.values()) == 2 * points, "A and B are stored once each on the stack"
    assert sum(everything.values()) == total

    with restored(moment) as restore:
        assert await stored_points(everyone, restore) == expected
        assert await aggregate_mismatches(everyone, restore) == []
        assert await device_rows(everyone, restore) == sorted(devices)

        # The group's offsets as its stopped workers leave them. Tansu keeps a stopped Faust
        # worker in its group and refuses commits from outside it, so the drill replays a
        # copy of the group (docs/backups.md#replay-after-a-restore).
        assert worker.stop() == 0
        tps = [TopicPartition(device_topic(d), p) for d in everyone
               for p in range(SETTINGS.topics.partitions)]
        left = await committed_offsets(SETTINGS.kafka.brokers, worker.env["APP_ID"], tps)
        group = unique("pitr-replay-")
        await commit_offsets(SETTINGS.kafka.brokers, group,
                             {tp: offset for tp, offset in left.items() if offset is not None})
        done = await asyncio.to_thread(run_replay, rfc3339(moment), APP_ID=group,
                                       DEVICE_FILTER=device_filter)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "read back and verified" in done.stdout

        start_worker("pitr-replay", APP_ID=group, DEVICE_FILTER=device_filter,
                     DB_HOST=restore.db.host, DB_PORT=str(restore.db.port),
                     DB_STATEMENT_CACHE="true")
        await wait_for(lambda: rows_at_least(everyone, total, restore), 90, "C replayed")
        await asyncio.sleep(2)  # anything extra would show up now
        assert await stored_points(everyone, restore) == everything
        assert await aggregate_mismatches(everyone, restore) == []
        assert await device_rows(everyone, restore) == sorted(everyone)


async def test_restore_refuses_a_time_it_cannot_reach() -> None:
    oldest = min(b["timestamp"]["stop"] for b in repository_info()["backup"])
    cases = {
        rfc3339(datetime.fromtimestamp(oldest, timezone.utc) - timedelta(seconds=1)):
            "before the end of the oldest backup",
        rfc3339(datetime.now(timezone.utc) + timedelta(hours=1)): "is in the future",
        "2026-12-04 10:00": "RFC 3339",
    }
    for moment, reason in cases.items():
        done = make("restore", TIME=moment, PORT=str(free_port()))
        assert done.returncode != 0 and reason in done.stderr, (moment, done.stderr)
    assert "usage: make restore" in make("restore", PORT=str(free_port())).stderr
    now = rfc3339(datetime.now(timezone.utc))
    assert "the local stack's own" in make("restore", TIME=now, PORT="55432").stderr


def archived_segments() -> list[Path]:
    state = REPO / ".stack"
    state = Path((state / "pgstate").resolve()) if (state / "pgstate").exists() else state
    conf = (state / "pgbackrest" / "pgbackrest.conf").read_text()
    repo = Path(next(line.split("=", 1)[1] for line in conf.splitlines()
                     if line.startswith("repo1-path=")))
    return sorted((repo / "archive" / "devicestream").glob("*/*/0*"))


async def switch_wal_with_a_commit() -> None:
    """One committed transaction in a WAL segment of its own, sent to the archive."""
    conn = await db_connect()
    try:
        # One transaction: through pgBouncer (transaction pooling) the next one may run on
        # another server session, which has no such temporary table.
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE wal_marker (x int) ON COMMIT DROP")
            await conn.execute("INSERT INTO wal_marker VALUES (1)")
    finally:
        await conn.close()
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-qtA", "-h", "/var/run/postgresql",
         "-p", "55432", "-d", "postgres", "-c", "SELECT pg_switch_wal()"],
        capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip()


async def test_a_segment_missing_from_the_archive_fails_the_restore_clearly() -> None:
    await asyncio.to_thread(backup)
    for _ in range(3):
        await switch_wal_with_a_commit()
        await asyncio.sleep(1)
    moment = await database_now()
    await switch_wal_with_a_commit()
    stop = repository_info()["backup"][-1]["archive"]["stop"]
    later = [p for p in archived_segments() if p.name[:24] > stop]
    assert len(later) >= 3, [p.name for p in later]
    hidden = later[1]
    aside = hidden.with_name(hidden.name + ".hidden-by-test")
    hidden.rename(aside)
    try:
        done = make("restore", TIME=rfc3339(moment), PORT=str(free_port()))
    finally:
        aside.rename(hidden)
    assert done.returncode != 0
    assert f"WAL segment {hidden.name[:24]} is missing from the archive" in done.stderr, done.stderr


async def test_retention_expires_old_full_backups_and_their_wal() -> None:
    first = backup(TYPE="full")["label"]
    await switch_wal_with_a_commit()
    second = backup(TYPE="full", BACKUP_RETENTION_FULL="1", WAL_ARCHIVE_DAYS="0")["label"]
    info = repository_info()
    labels = [b["label"] for b in info["backup"]]
    assert labels == [second], labels
    kept_from = info["backup"][0]["archive"]["start"]
    assert info["archive"][-1]["min"] >= kept_from
    assert all(p.name[:24] >= kept_from for p in archived_segments())
    assert first not in labels


async def test_compressed_chunks_come_back_compressed_with_exactly_their_rows(
        timescale_license) -> None:
    devices, _ = fleet("pitr-compressed-", 3)
    old = datetime.now(timezone.utc) - timedelta(days=12)
    points = [(int(old.timestamp() * 1e6) + i * 1_000_000, d, f"m{i % 3}", float(i))
              for d in devices for i in range(400)]
    pool = await create_pool(SETTINGS)
    try:
        assert (await TimescaleSink(pool).write(points)).inserted == len(points)
    finally:
        await pool.close()
    await maintain(SETTINGS, unique("pitr-compressed-"), wait=120)  # compression enabled
    assert await compress_chunks_holding(old) >= 1
    stored = await stored_points(devices)
    assert sum(stored.values()) == len(points)
    await asyncio.to_thread(backup)
    moment = await database_now()

    refused = make("restore", TIME=rfc3339(moment), PORT=str(free_port()),
                   TIMESCALEDB_LICENSE="apache")
    assert refused.returncode != 0
    assert "compressed chunks, which TimescaleDB under the Apache license reads as empty" \
        in refused.stderr, refused.stderr
    with restored(moment) as restore:
        conn = await db_connect(restore)
        try:
            compressed = await conn.fetchval(
                "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = 'storage' AND hypertable_name = 'readings' "
                "AND range_start <= $1 AND range_end > $1", old)
        finally:
            await conn.close()
        assert compressed is True
        assert await stored_points(devices, restore) == stored
        assert await aggregate_mismatches(devices, restore) == []

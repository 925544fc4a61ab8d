"""Backup and restore benchmark: ``python -m bench.backup`` (``--help`` for the options).

Issue #14's figures, on the 10M-point dataset of ``bench.queries``, measured on a private
PostgreSQL server and pgBackRest repository, so the local stack's state is neither read
nor changed:

1. creates a folder ``/var/tmp/bench-backup-*`` owned by ``postgres`` and in it a cluster
   (``initdb``, the highest PostgreSQL major installed) listening on a free port of
   127.0.0.1 and a socket of its own, with TimescaleDB preloaded, the stack's settings for
   this host (``stack/pg_tuning.py`` as ``stack/up.sh`` runs it) and its WAL archived by
   ``pgbackrest archive-push`` into a repository of its own (stanza ``bench``, lz4 as the
   stack's; no ``archive_timeout``, so only full segments are archived); starts it with
   ``pg_ctl``, creates the ``devicestream`` role and the ``devicestream_bench`` database
   with TimescaleDB, applies the migrations and creates the stanza;
2. loads the dataset with ``bench.queries.load`` (the real sink, ``TimescaleSink``) and
   reads the WAL position before and after: WAL bytes written per million points; then
   switches the WAL, waits until the archiver has pushed the last segment and adds up the
   repository's files of the load's segments: archived (lz4) bytes per million points;
3. times a full backup (``pgbackrest backup --type=full``): seconds, the database size
   pgBackRest copied, the repository's size of the backup, MB/s of database;
4. restores that backup into a second data dir (``pgbackrest restore --type=immediate
   --target-action=promote --archive-mode=off``), writes its ``postgresql.conf`` (own port
   and socket, no archiving, the settings recovery needs at least the source's values of,
   from ``pg_controldata``), starts it and waits until it is out of recovery: seconds and
   MB/s of the whole restore; fails unless it holds the source's ``storage.readings`` rows;
5. exports every raw chunk to Parquet with ``sinks.cold_archive.archive_chunk``, each in a
   transaction rolled back (``bench.archive.export``): bytes per point, points per second;
6. stops both servers (``pg_ctl stop -m fast``, signals to their own pid as a fallback),
   removes the folder (``--keep-dir`` keeps it, logs included), writes
   ``bench/results/backup.json`` and prints the figures.

MB is 10^6 bytes. Needs root (``runuser -u postgres``) and about 15 GB free under
/var/tmp.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import re
import shutil
import time
from dataclasses import replace
from functools import partial
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.archive import CHUNKS_IN, export
from bench.private_postgres import (PG_USER, Server, as_postgres, create_database, pg_bindir,
                                    run_with_servers, stack_tuning, start_cluster,
                                    write_postgres_file)
from bench.queries import (RESULTS, psql_super, add_dataset_options, command, connect, load,
                           machine, save_results)
from sinks.cold_archive import Chunk
from streams.settings import Settings

MB = 1_000_000
STANZA = "bench"
# Segment files in the repository: <24 hex digits of the segment>-<sha1>[.lz4].
_SEGMENT_FILE = re.compile(r"^([0-9A-F]{24})-[0-9a-f]{40}")
# Recovery refuses values below the source's for these; pg_controldata names them so.
_CONTROL_SETTINGS = {"max_connections": "max_connections",
                     "max_worker_processes": "max_worker_processes",
                     "max_wal_senders": "max_wal_senders",
                     "max_prepared_transactions": "max_prepared_xacts",
                     "max_locks_per_transaction": "max_locks_per_xact"}
_CHECKPOINTS = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"


class Repository:
    """This run's pgBackRest repository, configuration and stanza, for ``source``."""

    def __init__(self, root: Path, source: Server) -> None:
        self.path = root / "repo"
        self.home = root / "pgbackrest"  # config, logs, lock and spool
        self.config = self.home / "pgbackrest.conf"
        self.source = source

    def create(self) -> None:
        """Write the configuration (as the stack's, but in this run's folder)."""
        for folder in (self.path, self.home):
            folder.mkdir()
            shutil.chown(folder, PG_USER, PG_USER)
        write_postgres_file(self.config, f"""\
# Written by bench/backup.py for its private server.
[global]
repo1-path={self.path}
repo1-retention-full=1
expire-auto=n
compress-type=lz4
start-fast=y
log-path={self.home}/log
lock-path={self.home}/lock
spool-path={self.home}/spool
log-level-console=warn
log-level-file=info

[{STANZA}]
pg1-path={self.source.data}
pg1-port={self.source.port}
pg1-socket-path={self.source.socket_dir}
""")

    def archive_command(self) -> str:
        return f"'pgbackrest --config={self.config} --stanza={STANZA} archive-push %p'"

    def run(self, command: str, *options: str) -> str:
        return as_postgres(f"pgbackrest {command} (logs: {self.home}/log)", "pgbackrest",
                           f"--config={self.config}", f"--stanza={STANZA}", command, *options)

    def segment_bytes(self, first: str, last: str) -> tuple[int, int]:
        """(bytes, files) of the archived WAL segments ``first`` to ``last``, both in."""
        size = files = 0
        for path in (self.path / "archive" / STANZA).glob("*/*/*"):
            match = _SEGMENT_FILE.match(path.name)
            if match and first <= match[1] <= last:  # hex names sort in WAL order
                size += path.stat().st_size
                files += 1
        return size, files

    def last_backup(self) -> dict[str, Any]:
        return orjson.loads(self.run("info", "--output=json"))[0]["backup"][-1]


# ------------------------------------------------------------------------------ steps

async def create_source(root: Path, bindir: Path, servers: list[Server],
                        tuning: dict[str, str]) -> tuple[Server, Repository, Settings]:
    """The private cluster, archiving into its repository, with the schema migrated."""
    source = Server("source", root, bindir)
    servers.append(source)  # before it starts: whatever happens, it is stopped
    repo = Repository(root, source)
    repo.create()
    start_cluster(source, tuning | {"wal_level": "replica", "archive_mode": "on",
                                    "archive_command": repo.archive_command()})
    repo.run("stanza-create")
    return source, repo, await create_database(source)


async def load_and_archive(settings: Settings, source: Server, repo: Repository,
                           args: argparse.Namespace, end: datetime) -> dict[str, Any]:
    """Load the dataset; the WAL it wrote, and that WAL as archived (lz4) in the repo."""
    switch_wal = partial(psql_super, "SELECT pg_switch_wal()",
                         socket_dir=str(source.socket_dir), port=source.port)
    conn = await connect(settings)
    try:
        switch_wal()  # the load's segments hold nothing else, but for a few bytes
        wal_from = await conn.fetchval("SELECT pg_current_wal_lsn()")  # asyncpg: an int
        checkpoints_from = await conn.fetchval(_CHECKPOINTS)
        print(f"loading {args.points:,} points through the sink ...", flush=True)
        loaded = await load(settings, args, end)
        wal_to = await conn.fetchval("SELECT pg_current_wal_lsn()")
        wal_bytes = wal_to - wal_from
        checkpoints = await conn.fetchval(_CHECKPOINTS) - checkpoints_from
        # The segments of the bytes [wal_from, wal_to) (pg_walfile_name names the segment
        # an LSN ends: the one before, for an LSN on a boundary).
        first, last = [await conn.fetchval("SELECT pg_walfile_name($1::pg_lsn)", lsn)
                       for lsn in (wal_from + 1, wal_to)]
        switch_wal()  # the last segment goes to the archive now
        t0 = time.perf_counter()
        await wait_archived(conn, last, source)
        archive_wait = time.perf_counter() - t0
    finally:
        await conn.close()
    archived, files = repo.segment_bytes(first, last)
    millions = loaded["points"] / 1_000_000
    return {"load": loaded, "wal": {
        "bytes": wal_bytes,
        "bytes_per_million_points": round(wal_bytes / millions),
        "checkpoints_during_load": checkpoints,
        "segments": [first, last], "archived_files": files, "archived_bytes": archived,
        "archived_bytes_per_million_points": round(archived / millions),
        "archive_wait_after_switch_seconds": round(archive_wait, 1)}}


async def wait_archived(conn: asyncpg.Connection, segment: str, source: Server,
                        timeout: float = 900) -> None:
    """Until the archiver has pushed ``segment`` (names sort in WAL order)."""
    deadline = time.monotonic() + timeout
    while True:
        row = await conn.fetchrow("SELECT coalesce(last_archived_wal, '') AS last, "
                                  "failed_count, last_failed_wal FROM pg_stat_archiver")
        if row["last"] >= segment:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"WAL segment {segment} not archived within {timeout:.0f} s (last archived "
                f"{row['last'] or 'none'}, {row['failed_count']} failures, last failed "
                f"{row['last_failed_wal']})\n{source.log_tail()}")
        await asyncio.sleep(0.5)


def full_backup(repo: Repository) -> dict[str, Any]:
    print("full backup ...", flush=True)
    t0 = time.perf_counter()
    repo.run("backup", "--type=full")
    seconds = time.perf_counter() - t0
    info = repo.last_backup()
    size = info["info"]["size"]
    return {"label": info["label"], "seconds": round(seconds, 1),
            "database_bytes": size, "repository_bytes": info["info"]["repository"]["size"],
            "mb_per_second": round(size / MB / seconds, 1)}


def control_settings(server: Server) -> dict[str, str]:
    """The source's values recovery needs at least, as pg_controldata reads them."""
    out = as_postgres("pg_controldata", server.bindir / "pg_controldata", server.data)
    found = dict(re.findall(r"^(\w+) setting:\s+(\S+)$", out, re.MULTILINE))
    return {name: found[control] for name, control in _CONTROL_SETTINGS.items()}


async def restore(repo: Repository, root: Path, servers: list[Server],
                  tuning: dict[str, str], settings: Settings, rows: int,
                  database_bytes: int) -> dict[str, Any]:
    """Restore the backup into a second data dir, start it, check its rows, stop it."""
    print("restore ...", flush=True)
    restored = Server("restored", root, repo.source.bindir)
    servers.append(restored)
    restored.data.mkdir(mode=0o700)
    shutil.chown(restored.data, PG_USER, PG_USER)
    t0 = time.perf_counter()
    repo.run("restore", f"--pg1-path={restored.data}", "--type=immediate",
             "--target-action=promote", "--archive-mode=off")
    restore_seconds = time.perf_counter() - t0
    # The backup brought the source's postgresql.conf (port, archiving): replaced.
    restored.configure(tuning | control_settings(restored) | {"archive_mode": "off"})
    restored.start()
    restored_settings = replace(settings, db=replace(settings.db, port=restored.port))
    await wait_promoted(restored_settings, restored)
    seconds = time.perf_counter() - t0
    conn = await connect(restored_settings)
    try:
        restored_rows = await conn.fetchval("SELECT count(*) FROM storage.readings")
    finally:
        await conn.close()
    restored.stop()
    if restored_rows != rows:
        raise RuntimeError(f"the restored storage.readings holds {restored_rows:,} rows, "
                           f"the source {rows:,}")
    return {"seconds": round(seconds, 1), "pgbackrest_restore_seconds": round(restore_seconds, 1),
            "start_and_recovery_seconds": round(seconds - restore_seconds, 1),
            "mb_per_second": round(database_bytes / MB / seconds, 1),
            "rows_checked": restored_rows}


async def wait_promoted(settings: Settings, server: Server, timeout: float = 1800) -> None:
    """Until ``server`` accepts connections out of recovery; fails if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(
                host=settings.db.host, port=settings.db.port, user=settings.db.user,
                password=settings.db.password, database=settings.db.name, timeout=5)
            try:
                if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # still starting
        if not server.alive():
            raise RuntimeError(f"the restored server exited\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the restored server is still in recovery after "
                               f"{timeout:.0f} s\n{server.log_tail()}")
        await asyncio.sleep(0.1)


async def parquet(settings: Settings, root: Path, args: argparse.Namespace,
                  end: datetime) -> dict[str, Any]:
    """Every raw chunk of the dataset exported to Parquet, nothing dropped."""
    print("Parquet export ...", flush=True)
    directory = root / "parquet"
    directory.mkdir()
    conn = await connect(settings)
    try:
        chunks = [Chunk(r["chunk"], r["range_start"], r["range_end"]) for r in
                  await conn.fetch(CHUNKS_IN, end - timedelta(days=args.days), end)]
        exported = await export(conn, chunks, directory)
    finally:
        await conn.close()
    return exported


async def run(args: argparse.Namespace, root: Path, servers: list[Server]) -> dict[str, Any]:
    bindir = pg_bindir()
    tuning = stack_tuning()
    end = datetime.now(timezone.utc).replace(microsecond=0)
    source, repo, settings = await create_source(root, bindir, servers, tuning)
    conn = await connect(settings)
    try:
        results: dict[str, Any] = {
            "command": command("bench.backup"),
            "machine": machine(),
            "postgres": await conn.fetchval("SHOW server_version"),
            "timescaledb": await conn.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"),
            "pgbackrest": as_postgres("pgbackrest version", "pgbackrest", "version").strip(),
            "settings": tuning,
            "data": {"points": args.points, "devices": args.devices, "metrics": args.metrics,
                     "days": args.days, "batch": args.batch},
        }
    finally:
        await conn.close()

    results |= await load_and_archive(settings, source, repo, args, end)
    conn = await connect(settings)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM storage.readings")
    finally:
        await conn.close()
    results["backup"] = full_backup(repo)
    results["restore"] = await restore(repo, root, servers, tuning, settings, rows,
                                       results["backup"]["database_bytes"])
    results["parquet"] = await parquet(settings, root, args, end)
    return results


def report(results: dict[str, Any]) -> list[str]:
    load, wal = results["load"], results["wal"]
    b, r, p = results["backup"], results["restore"], results["parquet"]
    rows = [
        ("dataset", f"{load['points']:,} points through the sink in {load['wall_seconds']} s"),
        ("WAL written", f"{wal['bytes_per_million_points'] / MB:,.1f} MB per M points "
                        f"({wal['bytes'] / MB:,.0f} MB, {wal['checkpoints_during_load']} "
                        f"checkpoints)"),
        ("WAL archived (lz4)", f"{wal['archived_bytes_per_million_points'] / MB:,.1f} MB per "
                               f"M points ({wal['archived_files']} segments, "
                               f"{wal['archived_bytes'] / MB:,.0f} MB)"),
        ("full backup", f"{b['seconds']} s, {b['database_bytes'] / MB:,.0f} MB of database "
                        f"-> {b['repository_bytes'] / MB:,.0f} MB in the repository, "
                        f"{b['mb_per_second']} MB/s"),
        ("restore", f"{r['seconds']} s ({r['pgbackrest_restore_seconds']} s pgbackrest "
                    f"restore + {r['start_and_recovery_seconds']} s start and recovery), "
                    f"{r['mb_per_second']} MB/s, {r['rows_checked']:,} rows checked"),
        ("Parquet archive", f"{p['bytes_per_point']} bytes per point "
                            f"({p['postgres_bytes_per_point']} in PostgreSQL), "
                            f"{p['points_per_second']:,} points/s export, "
                            f"{len(p['files'])} chunks"),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {text}" for name, text in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_options(parser)
    parser.add_argument("--keep-dir", action="store_true",
                        help="keep the run's folder (data dirs, repository, logs); the "
                             "servers are stopped all the same")
    parser.add_argument("--output", type=Path, default=RESULTS / "backup.json")
    args = parser.parse_args()
    results = run_with_servers(parser, "bench-backup-", args.keep_dir,
                               functools.partial(run, args))
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

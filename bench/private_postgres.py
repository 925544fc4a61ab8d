"""A PostgreSQL server of one caller's own, for benchmarks and tests: a new cluster in a
folder of its own, with TimescaleDB, listening on a free port of 127.0.0.1 (``listen_port``)
and a socket of its own, so that what runs against it neither reads nor changes the local
stack's state.

Needs root: the servers run as the postgres user (``runuser``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, TypeVar

from bench.queries import DB_NAME, REPO, bench_settings, connect, psql_super
from schema.migrate import migrate
from schema.roles import grant_privileges
from streams.settings import Settings

PG_USER = "postgres"
T = TypeVar("T")


def as_postgres(what: str, *command: str | Path) -> str:
    """Run ``command`` as the postgres user; its stdout, or an error naming ``what``."""
    done = subprocess.run(["runuser", "-u", PG_USER, "--", *map(str, command)], cwd="/",
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def write_postgres_file(path: Path, text: str) -> None:
    """Write a file only the postgres user (and root) can read."""
    path.write_text(text)
    owner = pwd.getpwnam(PG_USER)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o600)


def pg_bindir() -> Path:
    """The binaries of the highest PostgreSQL major installed (stack/common.sh's pg_major)."""
    majors = [int(d.name) for d in Path("/usr/lib/postgresql").glob("*")
              if d.name.isdigit() and os.access(d / "bin" / "postgres", os.X_OK)]
    if not majors:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql: run 'make setup'")
    return Path(f"/usr/lib/postgresql/{max(majors)}/bin")


def stack_tuning() -> dict[str, str]:
    """The settings ``stack/up.sh`` gives the stack's cluster on this host (its flags)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "stack" / "pg_tuning.py"), "--active-connections", "60",
         "--ts-background-workers", "8"], check=True, capture_output=True, text=True).stdout
    pairs = (line.split("=", 1) for line in out.splitlines()
             if line.strip() and not line.startswith("#"))
    return {"max_connections": "200"} | {k.strip(): v.strip() for k, v in pairs}


def listen_port() -> int:
    """A port of 127.0.0.1 that nothing is bound to now, below the kernel's ephemeral range
    (``net.ipv4.ip_local_port_range``), for a server that may stop and start again: while
    it is stopped, no outgoing connection is given the port as its own, which would keep
    the server from binding it again (a connection to the port may even meet itself)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.SystemRandom().sample(range(low // 2, low), 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port of 127.0.0.1 found in {low // 2}-{low - 1}")


def log_tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` of a server's ``log``, headed by its path, for an error message."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {log})"
    return f"--- end of {log} ---\n" + "\n".join(tail)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Server:
    """A PostgreSQL server of this run's own: data dir, log and socket in the run's folder.

    Only its postmaster is ever stopped: the pid written in its own data dir, checked
    against the data dir on its command line before any signal.
    """

    def __init__(self, name: str, root: Path, bindir: Path) -> None:
        self.name = name
        self.bindir = bindir
        self.data = root / name
        self.log = root / f"{name}.log"
        self.socket_dir = root / "socket"
        self.port = listen_port()
        self.pid: int | None = None

    def configure(self, settings: dict[str, str]) -> None:
        """Write ``postgresql.conf``: this server's address first, then ``settings``."""
        own = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
               "unix_socket_directories": f"'{self.socket_dir}'",
               "shared_preload_libraries": "'timescaledb'",
               "timescaledb.telemetry_level": "off",
               "password_encryption": "'scram-sha-256'",
               "timezone": "'UTC'", "log_timezone": "'UTC'"}
        lines = [f"{k} = {v}" for k, v in (own | settings).items()]
        write_postgres_file(self.data / "postgresql.conf",
                            f"# Written by bench/private_postgres.py for its {self.name} server.\n"
                            + "\n".join(lines) + "\n")

    def start(self) -> None:
        """Start and wait until it accepts connections (a standby: read-only ones)."""
        try:
            as_postgres(f"starting the {self.name} server", self.bindir / "pg_ctl", "-D",
                        self.data, "-l", self.log, "-w", "-t", "600", "start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None
        self.pid = self._pid_file()

    def stop(self) -> None:
        """Fast shutdown; SIGQUIT, then SIGKILL, to its own pid when that fails."""
        pid = self.pid or self._pid_file()
        if pid is None or not _alive(pid):
            return
        try:
            as_postgres(f"stopping the {self.name} server", self.bindir / "pg_ctl", "-D",
                        self.data, "stop", "-m", "fast", "-w", "-t", "60")
        except RuntimeError as exc:
            print(f"  {exc}", file=sys.stderr)
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            if not (_alive(pid) and self._runs_here(pid)):
                return
            os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)

    def alive(self) -> bool:
        pid = self.pid or self._pid_file()
        return pid is not None and _alive(pid)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log, lines)

    def _pid_file(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _runs_here(self, pid: int) -> bool:
        """``pid`` is a postmaster of this data dir (pg_ctl starts it with ``-D``)."""
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.data).encode() in args


def run_with_servers(parser: argparse.ArgumentParser, prefix: str, keep: bool,
                     main: Callable[[Path, list[Server]], Coroutine[Any, Any, T]]) -> T:
    """Run a benchmark's ``main`` in a ``server_folder`` of its own, as root only (its
    servers run as the postgres user); SIGTERM unwinds like Ctrl-C, so that the servers are
    stopped then too."""
    if os.geteuid() != 0:
        parser.error("run as root: the servers run as the postgres user (runuser)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with server_folder(prefix, keep) as (root, servers):
        return asyncio.run(main(root, servers))


@contextlib.contextmanager
def server_folder(prefix: str, keep: bool = False) -> Iterator[tuple[Path, list[Server]]]:
    """A new folder ``/var/tmp/{prefix}*`` owned by postgres, and a list for the servers
    created in it: when the block ends, however, each is stopped and the folder removed
    (unless ``keep``)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    shutil.chown(root, PG_USER, PG_USER)
    servers: list[Server] = []
    try:
        yield root, servers
    finally:
        for server in servers:
            server.stop()
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def start_cluster(server: Server, settings: dict[str, str]) -> None:
    """``initdb`` a new cluster for ``server``, configure it with ``settings`` and start it."""
    server.socket_dir.mkdir()
    shutil.chown(server.socket_dir, PG_USER, PG_USER)
    as_postgres("initdb", server.bindir / "initdb", "-D", server.data, "-E", "UTF8",
                "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256")
    server.configure(settings)
    server.start()


async def create_database(server: Server, database: str = DB_NAME) -> Settings:
    """The owner, workers' and read-only roles and ``database`` (default: the bench
    database) with TimescaleDB and the schema migrated (privileges granted as ``migrate``
    does), on ``server``; settings that connect to it as the workers' role."""
    settings = bench_settings(server.port, database)
    owner = settings.as_owner()
    statements = [(f"CREATE ROLE {user} LOGIN PASSWORD '{password.replace(chr(39), chr(39) * 2)}'",
                   "postgres")
                  for user, password in ((owner.db.user, owner.db.password),
                                         (settings.db.user, settings.db.password),
                                         (settings.read_db.user, settings.read_db.password))]
    statements += [(f"CREATE DATABASE {settings.db.name} OWNER {owner.db.user}", "postgres"),
                   ("CREATE EXTENSION timescaledb", settings.db.name)]
    for sql, target in statements:
        psql_super(sql, target, socket_dir=str(server.socket_dir), port=server.port)
    conn = await connect(settings)  # as the owner
    try:
        await migrate(conn)
        await grant_privileges(conn, settings.db.user, settings.read_db.user)
    finally:
        await conn.close()
    return settings


async def private_database(name: str, root: Path, servers: list[Server],
                           tuning: dict[str, str], database: str = DB_NAME) -> Settings:
    """A new server ``name`` of this run with ``tuning`` and ``database`` (default: the
    bench database) on it, migrated; settings that connect to it as the workers' role."""
    server = Server(name, root, pg_bindir())
    servers.append(server)  # before it starts: whatever happens, it is stopped
    start_cluster(server, tuning)
    return await create_database(server, database)

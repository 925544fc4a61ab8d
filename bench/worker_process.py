"""A real ``faust -A <app> worker`` process on a free web port, for the benchmarks and the
tests (``tests.stack.Worker``), and fresh names for what a run creates.

The process gets a consumer group (``APP_ID``) and a Faust data folder of its own, a short
session timeout (the local broker's first group join waits about half of it), and logs to
``log_dir/worker-<name>.log``. It is stopped by its pid only.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import aiohttp
import orjson

from bench.private_broker import LOG_DIR, free_port

REPO = Path(__file__).resolve().parents[1]


def unique(prefix: str) -> str:
    """A name no earlier run used (device ids, consumer groups)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def fleet(prefix: str, count: int) -> tuple[list[str], str]:
    """``count`` new device ids sharing a fresh prefix, and the DEVICE_FILTER matching them."""
    group = unique(prefix)
    return [f"{group}-{i}" for i in range(count)], re.escape(group) + "-"


class WorkerProcess:
    """One worker process; ``env`` adds to or overrides its environment. ``process`` is
    its ``Popen`` once started."""

    def __init__(self, name: str, app: str = "streams.app", log_dir: Path | str = LOG_DIR,
                 **env: str) -> None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.app = app
        self.log_path = log_dir / f"worker-{name}.log"
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "APP_ID": unique(f"devicestream-{name}-"),
            "WEB_PORT": str(self.web_port),
            "BROKER_SESSION_TIMEOUT": "6",
            **env,
        }
        if "DATA_DIR" not in env:
            self.env["DATA_DIR"] = tempfile.mkdtemp(prefix="devicestream-worker-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The worker's process (RuntimeError before ``start()``)."""
        if self._process is None:
            raise RuntimeError("the worker process is not started")
        return self._process

    def start(self) -> "WorkerProcess":
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", self.app, "worker", "-l", "info",
                 "--web-port", str(self.web_port)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode if process is not None else None

    def kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    async def get(self, path: str) -> tuple[int, Any]:
        """Status and decoded JSON (or text) of one GET of the worker's web server, with its
        READ_TOKEN if it has one; (0, error) while the port is closed."""
        token = self.env.get("READ_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{self.web_port}{path}",
                                       headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=30)) as response:
                    body = await response.read()
                    if response.content_type == "application/json":
                        return response.status, orjson.loads(body)
                    return response.status, body.decode()
        except aiohttp.ClientConnectionError as exc:
            return 0, str(exc)

    async def answering(self, path: str, status: int, timeout: float = 120) -> None:
        """Wait until GET ``path`` answers ``status``; RuntimeError with the log's tail when
        the process exits or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while (await self.get(path))[0] != status:
            if self._process is None or self._process.poll() is not None \
                    or time.monotonic() > deadline:
                raise RuntimeError(f"the worker does not answer {path}:\n{self.log_tail()}")
            await asyncio.sleep(0.5)


async def disjoint_shares(workers: Sequence[WorkerProcess], topic: str) -> set[int] | None:
    """The partitions of ``topic`` the workers hold between them (``/pipeline/lag``) when
    every one holds some and no two hold the same; None otherwise (not yet split)."""
    held: list[set[int]] = []
    for worker in workers:
        status, lag = await worker.get("/pipeline/lag")
        if status != 200:
            return None
        held.append({p["partition"] for p in lag["partitions"] if p["topic"] == topic})
    union = set().union(*held)
    return union if all(held) and sum(map(len, held)) == len(union) else None

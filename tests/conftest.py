from __future__ import annotations

from typing import Iterator

import pytest

from tests.stack import Worker, require_stack


@pytest.fixture
def stack() -> None:
    """The real local stack; fails with a hint when it is not running."""
    require_stack()


@pytest.fixture
def start_worker(stack: None) -> Iterator:
    """Start real worker processes; they are stopped (or killed) after the test."""
    workers: list[Worker] = []

    def start(name: str = "worker", **env: str) -> Worker:
        worker = Worker(name, **env).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=20)
        worker.kill()

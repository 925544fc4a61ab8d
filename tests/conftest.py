from __future__ import annotations

from typing import AsyncIterator, Iterator

import pytest

from tests.stack import (
    BrokerProxy,
    PrivateBroker,
    PrivateDatabase,
    Worker,
    db_connect,
    exclusive,
    require_stack,
    running_database,
    stack_replica,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first, then the integration tests, the slow ones first (each group in
    collection order): a broken unit fails within the first minute, not after the slow
    tests; and run side by side, the slow tests end early rather than last."""
    items.sort(key=lambda item: (item.get_closest_marker("integration") is not None,
                                 item.get_closest_marker("slow") is None))


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


@pytest.fixture
async def private_broker(request: pytest.FixtureRequest) -> AsyncIterator[PrivateBroker]:
    """A Tansu broker of the test's own (``bench.private_broker.PrivateBroker``), killed
    after the test.

    Ask for it before ``start_worker``: fixtures are torn down in reverse, so the workers
    stop while their broker is still there.
    """
    broker = await PrivateBroker(request.node.name[:60]).start()
    yield broker
    broker.kill()


@pytest.fixture
async def proxied_broker(
        request: pytest.FixtureRequest) -> AsyncIterator[tuple[PrivateBroker, BrokerProxy]]:
    """A private Tansu behind a ``BrokerProxy`` that it advertises, so that every client
    connection, metadata's included, goes through the proxy (which can cut them all). Ask
    for it before ``start_worker``, as for ``private_broker``."""
    proxy = BrokerProxy()
    broker = PrivateBroker(request.node.name[:60], advertised_port=proxy.port)
    proxy.start(broker.port)
    try:
        await broker.start()
        yield broker, proxy
    finally:
        broker.kill()
        proxy.close()


@pytest.fixture
async def private_database() -> AsyncIterator[PrivateDatabase]:
    """PostgreSQL and pgBouncer of the test's own (``tests.stack.PrivateDatabase``), which it
    may stop and start; stopped after the test. Ask for it before ``start_worker``."""
    async with running_database() as database:
        yield database


@pytest.fixture(scope="module")
def replica() -> Iterator[None]:
    """The local stack's streaming replica on 127.0.0.1:55433, for the module's tests (one
    module at a time: some stop it)."""
    with exclusive("replica"), stack_replica():
        yield


@pytest.fixture
def pgbackrest_turn() -> Iterator[None]:
    """The test has the stack's pgBackRest repository to itself (a backup takes its lock,
    and retention expires other tests' backups)."""
    with exclusive("pgbackrest"):
        yield


@pytest.fixture
def maintenance_turn() -> Iterator[None]:
    """The test runs storage maintenance with no other run of a test in the way."""
    with exclusive("maintenance"):
        yield


@pytest.fixture
async def timescale_license(stack: None) -> None:
    """Skips the test unless TimescaleDB here has the Timescale license (compression and
    policies): the production image's edition, which stack/setup.sh builds where its
    source is at hand."""
    conn = await db_connect()
    try:
        license_ = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    finally:
        await conn.close()
    if license_ != "timescale":
        pytest.skip(
            f"TimescaleDB here is the {license_!r} build (SHOW timescaledb.license): "
            "compression and retention policies need the Timescale license, which the "
            "production image timescale/timescaledb has")

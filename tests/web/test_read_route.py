"""web.read_route: reads go to the replica while it is up and close behind, else to the
primary, and every such fallback is counted."""
from __future__ import annotations

from typing import Any, Mapping

import pytest

from streams.settings import Settings
from web.read_route import ReadRoute

SETTINGS = Settings.from_env({"READ_MAX_LAG_SECONDS": "5"})


class FakePool:
    def __init__(self, name: str, fail: BaseException | None = None) -> None:
        self.name, self.fail = name, fail
        self.acquired = self.released = 0

    async def acquire(self) -> str:
        if self.fail is not None:
            raise self.fail
        self.acquired += 1
        return f"{self.name}-connection"

    async def release(self, conn: str) -> None:
        self.released += 1

    async def close(self) -> None:
        pass


def route(replica: FakePool | None, primary: FakePool,
          sample: dict[str, Any] | None = None, error: str | None = None) -> ReadRoute:
    pools = {"replica": replica, "primary": primary}

    async def open_pool(target: str, kwargs: Mapping[str, Any]) -> FakePool:
        pool = pools[target]
        assert pool is not None
        return pool

    reads = ReadRoute(SETTINGS, open_pool, {} if replica is not None else None, {})
    if reads.replica is not None:
        reads.replica.value, reads.replica.error = sample, error
    return reads


async def read_once(reads: ReadRoute) -> str:
    async with reads.acquire() as conn:
        return conn


async def test_without_a_replica_every_read_goes_to_the_primary_uncounted() -> None:
    primary = FakePool("primary")
    reads = route(None, primary)
    assert await read_once(reads) == "primary-connection"
    assert reads.reads == {"primary": 1} and not reads.fallbacks
    assert (primary.acquired, primary.released) == (1, 1)
    assert "replica" not in reads.state()


async def test_a_replica_close_behind_serves_the_reads() -> None:
    reads = route(FakePool("replica"), FakePool("primary"),
                  {"standby": True, "lag_seconds": 4.9, "lag_bytes": 100})
    assert await read_once(reads) == "replica-connection"
    assert await read_once(reads) == "replica-connection"
    assert reads.reads == {"replica": 2} and not reads.fallbacks
    state = reads.state()
    assert state["target"] == "replica" and state["replica"]["lag_bytes"] == 100


@pytest.mark.parametrize("sample, error, reason", [
    ({"standby": True, "lag_seconds": 5.1, "lag_bytes": 9}, None, "replica_lagging"),
    ({"standby": False, "lag_seconds": 0.0, "lag_bytes": 0}, None, "replica_promoted"),
    (None, "ConnectionRefusedError: connect call failed", "replica_down"),
])
async def test_a_replica_down_lagging_or_promoted_sends_reads_to_the_primary(
        sample, error, reason) -> None:
    replica = FakePool("replica")
    reads = route(replica, FakePool("primary"), sample, error)
    assert await read_once(reads) == "primary-connection"
    assert replica.acquired == 0
    assert reads.reads == {"primary": 1} and reads.fallbacks == {reason: 1}
    assert reads.state()["fallback_reason"] == reason


async def test_a_replica_that_refuses_a_connection_is_marked_down_at_once() -> None:
    reads = route(FakePool("replica", fail=ConnectionRefusedError("refused")),
                  FakePool("primary"), {"standby": True, "lag_seconds": 0.0, "lag_bytes": 0})
    assert await read_once(reads) == "primary-connection"
    assert reads.fallbacks == {"replica_down": 1}
    assert reads.replica is not None and "refused" in reads.replica.error
    assert reads.choose() == ("primary", "replica_down")  # until the next good sample


async def test_other_errors_of_the_replica_are_not_hidden() -> None:
    reads = route(FakePool("replica", fail=RuntimeError("a bug")), FakePool("primary"),
                  {"standby": True, "lag_seconds": 0.0, "lag_bytes": 0})
    with pytest.raises(RuntimeError):
        await read_once(reads)

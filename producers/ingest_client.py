"""A client of ``POST /ingest``: devices (or a gateway) sending readings over HTTP.

Each device's readings go in requests of their own, with that device's token
(``device_token(DEVICE_TOKEN_SECRET, device_id)``, docs/security.md#device-tokens), so the
worker admits them as the device and nothing else. With a gateway token instead, one request carries
every device's readings. A refused request (400, 401, 403, 413, ...) raises: nothing of it was
published. A 503 is retried after the server's ``Retry-After``: sending a body again is
safe, the database stores a (device, metric, time) once.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import aiohttp
import orjson

# Readings per request: far below the 1 MiB body limit for readings of a few metrics (a
# body over it is refused with 413, which raises).
MAX_READINGS_PER_REQUEST = 500
RETRIES = 5


class IngestRefused(Exception):
    """``POST /ingest`` refused a request (its status and answer in the message)."""

    def __init__(self, status: int, answer: str) -> None:
        super().__init__(f"POST /ingest answered {status}: {answer[:500]}")
        self.status = status


class IngestClient:
    """Sends readings to a worker's ``POST /ingest``; use as ``async with``.

    ``token_for(device_id)`` gives the bearer token of a device's requests; ``gateway``
    instead sends every device's readings together with that one token.
    """

    def __init__(self, url: str, *, token_for: Callable[[str], str] | None = None,
                 gateway: str | None = None, concurrency: int = 16) -> None:
        if (token_for is None) == (gateway is None):
            raise ValueError("give either token_for (device tokens) or gateway, not both")
        self._url = url
        self._token_for = token_for
        self._gateway = gateway
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def __aenter__(self) -> "IngestClient":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.flush()
        finally:
            assert self._session is not None
            await self._session.close()

    async def send_many(self, readings: Sequence[Mapping[str, Any]]) -> None:
        """Start sending ``readings`` (waits while ``concurrency`` requests are in flight);
        ``flush`` waits for them and raises the first refusal."""
        batches: list[tuple[str, Sequence[Mapping[str, Any]]]]
        if self._gateway:
            batches = [(self._gateway, list(readings))]
        else:
            by_device: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
            for reading in readings:
                by_device[str(reading["device_id"])].append(reading)
            token_for = self._token_for
            assert token_for is not None  # __init__: token_for where there is no gateway
            batches = [(token_for(device), batch) for device, batch in by_device.items()]
        for token, batch in batches:
            for start in range(0, len(batch), MAX_READINGS_PER_REQUEST):
                body = orjson.dumps(batch[start:start + MAX_READINGS_PER_REQUEST])
                await self._slots.acquire()
                task = asyncio.create_task(self._post(body, token))
                self._pending.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._slots.release()
        if not task.cancelled() and task.exception() is None:
            self._pending.discard(task)  # failures stay, for flush to raise

    async def flush(self) -> None:
        """Wait for every request sent; raise the first failure."""
        pending, self._pending = list(self._pending), set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _post(self, body: bytes, token: str) -> None:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for attempt in range(RETRIES):
            async with self._session.post(self._url, data=body, headers=headers) as response:
                answer = await response.text()
                if response.status == 202:
                    self.accepted += orjson.loads(answer)["accepted"]
                    return
                if response.status != 503 or attempt == RETRIES - 1:
                    raise IngestRefused(response.status, answer)
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

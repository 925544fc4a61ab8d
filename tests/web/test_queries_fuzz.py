"""The device query routes fuzzed (hypothesis) against the real database: never a 5xx."""
from __future__ import annotations

import asyncio
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from tests.stack import SETTINGS
from tests.web.test_queries_integration import queries_client

pytestmark = pytest.mark.integration

TEXT = st.text(max_size=40)
TIMES = TEXT | st.sampled_from(["2026-11-28T17:00:00Z", "2026-11-28T17:00:00+01:00",
                                "1764349200000", "2026-11-28", "0001-01-01T00:00:00Z",
                                "9999-12-31T23:59:59Z", "2026-11-28T17:00:00.123456789Z"])
PARAMS = st.fixed_dictionaries({}, optional={
    "metric": TEXT, "start": TIMES, "end": TIMES,
    "limit": TEXT | st.integers(-10, 10**12).map(str),
    "resolution": TEXT | st.sampled_from(["1m", "1h", "raw", "1d"]),
})
ROUTES = st.sampled_from(["latest", "readings", "aggregates"])
DEVICES = TEXT | st.sampled_from(["sensor-001", "a" * 129, "..", "%00", "x;DROP TABLE readings"])


async def _ask(monkeypatch: pytest.MonkeyPatch, device: str, route: str,
               params: dict[str, str]) -> tuple[int, bytes]:
    client = await queries_client(monkeypatch, SETTINGS)
    try:
        answer = await client.get(f"/devices/{quote(device, safe='')}/{route}", params=params)
        return answer.status, await answer.read()
    finally:
        await client.close()
        await client.read_pool.close()


@hypothesis_settings(max_examples=120, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=DEVICES, route=ROUTES, params=PARAMS)
def test_no_parameters_get_a_server_error(stack, monkeypatch, device: str, route: str,
                                          params: dict[str, str]) -> None:
    status, body = asyncio.run(_ask(monkeypatch, device, route, params))
    assert status < 500, (status, body[:300])
    assert b"Traceback" not in body
    if status == 404 and body.startswith(b"404: Not Found"):
        return  # the path matched no route at all (e.g. an empty id): aiohttp's own answer
    assert isinstance(orjson.loads(body), (dict, list))

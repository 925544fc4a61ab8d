"""POST /ingest fuzzed (hypothesis): any body or header gets a JSON 2xx/4xx, never a 5xx."""
from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from tests.web.test_ingest import TOKEN, ingest_routes, use_ingest_settings

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20,
)
READING_LIKE = st.fixed_dictionaries(
    {"device_id": st.text(max_size=20) | st.just("sensor-001"),
     "time": st.integers() | st.text(max_size=30) | st.just("2026-11-28T17:00:00Z"),
     "metrics": st.dictionaries(st.text(max_size=10), JSON, max_size=4) | JSON},
)


def _encode(value: object) -> bytes:
    return json.dumps(value).encode()


BODIES = (st.binary(max_size=2000)
          | JSON.map(_encode)
          | READING_LIKE.map(_encode)
          | st.lists(READING_LIKE, max_size=5).map(_encode))
AUTHORIZATION = st.none() | st.just(f"Bearer {TOKEN}") | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


async def _post(body: bytes, authorization: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with TestClient(TestServer(ingest_routes())) as client:
        answer = await client.post("/ingest", data=body, headers=headers)
        return answer.status, await answer.read()


@pytest.fixture
def with_token(monkeypatch: pytest.MonkeyPatch) -> None:
    use_ingest_settings(monkeypatch, TOKEN)


@hypothesis_settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, authorization=AUTHORIZATION)
def test_no_body_or_header_gets_a_server_error(with_token, body: bytes,
                                               authorization: str | None) -> None:
    status, answer = asyncio.run(_post(body, authorization))
    assert status in (202, 400, 401, 413), (status, answer[:200])
    assert isinstance(orjson.loads(answer), dict)
    assert b"Traceback" not in answer

"""POST /ingest in-process (loopback HTTP, no broker): the Faust view with a fake producer."""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import orjson
import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer

from producers import BrokerUnavailable, DeliveryError, Failure
from schema.validation import Reading
from streams.app import app, settings
from streams.settings import TopicMode
from web import credentials, ingest
from web.credentials import device_token
from web.errors import json_errors

TOKEN = "s3cret-token-value"


class FakeProducer:
    """What the view needs of a DeviceProducer; records what it would publish."""

    instances: list["FakeProducer"] = []

    def __init__(self, settings: Any) -> None:
        self.published: list[Reading] = []
        self.error: BaseException | None = None
        self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> list[Failure]:
        self.stopped = True
        return []

    async def send_many(self, readings: list[Reading], *, wait: bool = False) -> int:
        assert wait, "the view answers only once the broker has the readings"
        if self.error is not None:
            raise self.error
        self.published += readings
        return len(readings)


def ingest_routes() -> aiohttp_web.Application:
    """A fresh aiohttp application serving the /ingest view registered on the Faust app."""
    web_app = aiohttp_web.Application(middlewares=[json_errors])
    view = app.web.views["/ingest"]

    async def handler(request: aiohttp_web.Request) -> Any:
        return await view(request)

    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        web_app.router.add_route(method, "/ingest", handler)
    return web_app


def use_ingest_settings(monkeypatch: pytest.MonkeyPatch, token: str = "", secret: str = "",
         previous: str = "") -> ingest.IngestPublisher:
    FakeProducer.instances.clear()
    run_settings = replace(settings, web=replace(settings.web, ingest_token=token,
                                                 device_token_secret=secret,
                                                 device_token_secret_previous=previous))
    publisher = ingest.IngestPublisher(run_settings, FakeProducer)
    monkeypatch.setattr(ingest, "publisher", publisher)
    monkeypatch.setattr(ingest, "handler", ingest.IngestHandler(run_settings, publisher))
    return publisher


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    use_ingest_settings(monkeypatch)
    async with TestClient(TestServer(ingest_routes())) as test_client:
        yield test_client


@pytest.fixture
async def token_client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    use_ingest_settings(monkeypatch, TOKEN)
    async with TestClient(TestServer(ingest_routes())) as test_client:
        yield test_client


SECRET, PREVIOUS, OTHER = ("n" * 32, "p" * 32, "o" * 32)


@pytest.fixture
async def device_client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    """Device tokens under SECRET, PREVIOUS still accepted, and the gateway's TOKEN."""
    use_ingest_settings(monkeypatch, TOKEN, SECRET, PREVIOUS)
    async with TestClient(TestServer(ingest_routes())) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reading(device: str = "sensor-001", seconds: int = 0, **metrics: Any) -> dict[str, Any]:
    moment = datetime.now(timezone.utc) - timedelta(minutes=1) + timedelta(seconds=seconds)
    return {"device_id": device, "time": moment.isoformat(), "metrics": metrics or {"t": 21.5}}


def published() -> list[Reading]:
    return [r for p in FakeProducer.instances for r in p.published]


async def post(client: TestClient, body: Any, **kwargs: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await client.post("/ingest", data=data, **kwargs)
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def test_valid_readings_are_published_and_answered_202_with_their_count(client) -> None:
    body = [reading("a", 0, t=1.5), reading("b", 1, t=2), reading("a", 2, door=True)]
    assert await post(client, body) == (202, {"accepted": 3})
    assert [(r.device_id, r.metrics) for r in published()] == [
        ("a", {"t": 1.5}), ("b", {"t": 2.0}), ("a", {"door": 1.0})]


async def test_one_reading_object_is_accepted_too(client) -> None:
    assert await post(client, reading("a")) == (202, {"accepted": 1})
    assert len(published()) == 1


async def test_any_invalid_reading_gets_400_listing_each_by_index_and_nothing_is_published(
    client,
) -> None:
    body = [reading("a"), {"device_id": "a", "metrics": {"t": 1}}, reading("a bad id"),
            reading("a", 1), 42]
    status, answer = await post(client, body)
    assert status == 400
    assert [e["index"] for e in answer["errors"]] == [1, 2, 4]
    assert "time" in answer["errors"][0]["error"]
    assert "device_id" in answer["errors"][1]["error"]
    assert published() == [] and FakeProducer.instances == [], "not even a producer started"


async def test_a_single_invalid_reading_is_listed_with_index_0(client) -> None:
    status, answer = await post(client, reading("a", t=float("inf")) | {"metrics": {"t": "x"}})
    assert status == 400 and [e["index"] for e in answer["errors"]] == [0]


async def test_duplicate_keys_are_refused_as_the_agent_refuses_them(client) -> None:
    one = orjson.dumps(reading("a"))[:-1] + b', "device_id": "a"}'
    status, answer = await post(client, one)
    assert status == 400 and "duplicate key" in answer["errors"][0]["error"]


async def test_readings_the_agent_would_dead_letter_for_time_are_refused(client) -> None:
    old = reading("a") | {"time": (datetime.now(timezone.utc) - timedelta(days=400)).isoformat()}
    future = reading("a") | {"time": int((datetime.now(timezone.utc)
                                          + timedelta(hours=1)).timestamp() * 1000)}
    status, answer = await post(client, [old, future])
    assert status == 400
    assert "retention" in answer["errors"][0]["error"]
    assert "future" in answer["errors"][1]["error"]


@pytest.mark.parametrize("body, why", [
    (b'{"device_id": "a", "time": ', "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'["caf\xe9"]', "not valid UTF-8"),
    (b"", "empty body"),
    (b"[]", "empty array"),
    (b"42", "got int"),
    (b'"text"', "got string"),
    (b"null", "got null"),
])
async def test_a_body_that_is_not_readings_json_gets_400_with_an_error(client, body, why) -> None:
    status, answer = await post(client, body)
    assert status == 400 and why in answer["error"]
    assert published() == []


async def test_a_body_over_1_mib_gets_413_from_its_declared_length(client) -> None:
    status, answer = await post(client, b"[" + b" " * (ingest.MAX_BODY_BYTES + 10) + b"]")
    assert status == 413 and "1 MiB" in answer["error"]


async def test_a_streamed_body_over_1_mib_gets_413_without_a_declared_length(client) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB in 64 KiB chunks, chunked transfer encoding
            sent += 65536
            yield b" " * 65536

    response = await client.post("/ingest", data=chunks())
    assert response.status == 413
    assert (await response.json())["error"].startswith("body over 1 MiB")


async def test_a_body_of_exactly_1_mib_is_not_too_large(client) -> None:
    body = orjson.dumps([reading("a", i) for i in range(100)])
    body = body[:-1] + b" " * (ingest.MAX_BODY_BYTES - len(body)) + b"]"
    assert len(body) == ingest.MAX_BODY_BYTES
    assert await post(client, body) == (202, {"accepted": 100})


async def test_the_body_is_read_in_chunks_holding_at_most_the_limit_plus_one_byte() -> None:
    class Stream:
        def __init__(self, size: int) -> None:
            self.left, self.asked = size, []

        async def read(self, n: int) -> bytes:
            self.asked.append(n)
            take = min(n, self.left)
            self.left -= take
            return b"x" * take

    stream = Stream(10 * 1024 * 1024)
    with pytest.raises(ingest.BodyTooLarge):
        await ingest.read_capped(stream, None, 1000)
    assert sum(stream.asked) == 1001, "stops one byte past the limit"
    stream = Stream(1000)
    assert len(await ingest.read_capped(stream, None, 1000)) == 1000


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic czNjcmV0", "Bearer",
                                    f"Bearer {TOKEN}x", f"bearer {TOKEN[:-1]}"])
async def test_a_missing_or_wrong_bearer_token_gets_401(token_client, header, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {} if header is None else {"Authorization": header}
    status, answer = await post(token_client, [reading("a")], headers=headers)
    assert status == 401 and "token" in answer["error"]
    assert published() == []
    assert TOKEN not in caplog.text and "wrong" not in caplog.text


async def test_the_right_bearer_token_is_accepted_and_never_logged(token_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    status, _ = await post(token_client, [reading("a")],
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 202
    assert TOKEN not in caplog.text


async def test_the_token_is_checked_before_the_body_is_read(token_client) -> None:
    status, _ = await post(token_client, b" " * (2 * ingest.MAX_BODY_BYTES))
    assert status == 401


async def test_tokens_are_compared_in_constant_time_against_every_secret(
        device_client, monkeypatch) -> None:
    calls = []
    real = credentials.hmac.compare_digest
    monkeypatch.setattr(credentials.hmac, "compare_digest",
                        lambda a, b: calls.append(1) or real(a, b))
    await post(device_client, [reading("a")], headers=bearer("nope"))
    assert calls == [1], "the gateway token"
    calls.clear()
    await post(device_client, [reading("a")], headers=bearer(device_token(SECRET, "a")))
    assert calls == [1, 1, 1], "the gateway token, then both device secrets, matched or not"


async def test_kafka_unreachable_gets_503_json_and_the_next_request_tries_again(
    client, monkeypatch,
) -> None:
    async def refuse(self: FakeProducer) -> None:
        raise BrokerUnavailable("no Kafka broker reachable at 127.0.0.1:1 after 3 attempt(s)")

    monkeypatch.setattr(FakeProducer, "start", refuse)
    status, answer = await post(client, [reading("a")])
    assert status == 503 and "Kafka is unavailable" in answer["error"]
    monkeypatch.undo()  # the broker is back
    use_ingest_settings(monkeypatch)
    assert (await post(client, [reading("a")]))[0] == 202


async def test_readings_the_broker_did_not_acknowledge_get_503_json(client) -> None:
    assert (await post(client, [reading("a")]))[0] == 202
    FakeProducer.instances[0].error = DeliveryError(
        [Failure("a", "device-data-a", 1, TimeoutError("not acknowledged within 30s"))])
    status, answer = await post(client, [reading("a")])
    assert status == 503
    assert "did not acknowledge 1 of 1" in answer["error"] and "again is safe" in answer["error"]


async def test_an_unexpected_error_gets_500_json_without_a_stack_trace(client, caplog) -> None:
    assert (await post(client, [reading("a")]))[0] == 202
    FakeProducer.instances[0].error = ZeroDivisionError("boom")
    status, answer = await post(client, [reading("a")])
    assert (status, answer) == (500, {"error": "internal error: ZeroDivisionError"})


async def test_a_worker_in_topic_mode_both_publishes_what_it_is_posted_to_the_shared_topic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    def factory(run_settings: Any) -> FakeProducer:
        made.append(run_settings.topics.mode)
        return FakeProducer(run_settings)

    both = replace(settings, topics=replace(settings.topics, mode=TopicMode.BOTH))
    publisher = ingest.IngestPublisher(both, factory)
    await publisher.get()
    await publisher.close()
    assert made == [TopicMode.SHARED], "where the move from per-device topics goes"
    for mode in (TopicMode.PER_DEVICE, TopicMode.SHARED):
        publisher = ingest.IngestPublisher(replace(both, topics=replace(both.topics, mode=mode)),
                                           factory)
        await publisher.get()
        await publisher.close()
    assert made[1:] == [TopicMode.PER_DEVICE, TopicMode.SHARED]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_get_405_json(client, method) -> None:
    response = await client.request(method, "/ingest")
    assert response.status == 405 and response.headers["Allow"] == "POST"
    assert "use POST" in (await response.json())["error"]


async def test_one_producer_serves_every_request_and_is_stopped_with_the_worker(
    client,
) -> None:
    for i in range(3):
        assert (await post(client, [reading("a", i)]))[0] == 202
    assert len(FakeProducer.instances) == 1, "started once, on the first request"
    await ingest.publisher.close()
    assert FakeProducer.instances[0].stopped
    status, answer = await post(client, [reading("a", 9)])
    assert status == 503 and "stopping" in answer["error"]


async def test_a_device_token_admits_its_own_devices_readings(device_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    token = device_token(SECRET, "dev-a")
    body = [reading("dev-a", 0), reading("dev-a", 1)]
    assert await post(device_client, body, headers=bearer(token)) == (202, {"accepted": 2})
    assert [r.device_id for r in published()] == ["dev-a", "dev-a"]
    assert token not in caplog.text and token.rpartition(".")[2] not in caplog.text


@pytest.mark.parametrize("devices", [["dev-b"], ["dev-a", "dev-b", "dev-a"]])
async def test_a_device_token_with_another_devices_reading_gets_403_and_publishes_nothing(
        device_client, devices) -> None:
    token = device_token(SECRET, "dev-a")
    status, answer = await post(device_client, [reading(d, i) for i, d in enumerate(devices)],
                                headers=bearer(token))
    assert status == 403 and "'dev-a'" in answer["error"]
    assert f"indexes {[i for i, d in enumerate(devices) if d != 'dev-a']}" in answer["error"]
    assert published() == []


@pytest.mark.parametrize("token", [
    device_token(OTHER, "dev-a"),                     # another secret
    device_token(SECRET, "dev-a")[:-1] + "A",         # one character off
    device_token(SECRET, "dev-b").replace("dev-b", "dev-a", 1),  # another device's mac
    "dev-a.",
    "dev-a",
])
async def test_a_forged_device_token_gets_401(device_client, token, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    status, answer = await post(device_client, [reading("dev-a")], headers=bearer(token))
    assert status == 401 and "token" in answer["error"]
    assert published() == []
    assert token not in caplog.text


async def test_while_rotating_the_previous_secrets_tokens_are_accepted_too(
        device_client) -> None:
    for secret in (SECRET, PREVIOUS):
        status, _ = await post(device_client, [reading("dev-a")],
                               headers=bearer(device_token(secret, "dev-a")))
        assert status == 202, secret
    assert len(published()) == 2


async def test_after_rotation_the_retired_secrets_tokens_get_401(monkeypatch) -> None:
    use_ingest_settings(monkeypatch, secret=SECRET)  # PREVIOUS no longer configured
    async with TestClient(TestServer(ingest_routes())) as client:
        old = await post(client, [reading("dev-a")], headers=bearer(device_token(PREVIOUS, "dev-a")))
        new = await post(client, [reading("dev-a")], headers=bearer(device_token(SECRET, "dev-a")))
    assert (old[0], new[0]) == (401, 202)


async def test_the_gateway_token_still_writes_for_any_device(device_client) -> None:
    status, _ = await post(device_client, [reading("dev-a"), reading("dev-b")],
                           headers=bearer(TOKEN))
    assert status == 202 and len(published()) == 2


async def test_with_device_tokens_only_a_request_without_one_gets_401(monkeypatch) -> None:
    use_ingest_settings(monkeypatch, secret=SECRET)
    async with TestClient(TestServer(ingest_routes())) as client:
        status, _ = await post(client, [reading("dev-a")])
    assert status == 401 and published() == []

"""Secrets come from the environment only and never show in logs or web answers."""
from __future__ import annotations

import asyncio
import urllib.request

import pytest

from tests.stack import fleet

pytestmark = pytest.mark.integration

TOKEN = "tok-" + "7f3a9c1e5b" * 3
SASL_PASSWORD = "sasl-" + "c0ffee4242" * 3


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read().decode()


async def test_secrets_never_appear_in_the_log_or_in_web_answers(start_worker) -> None:
    _, only = fleet("secrets-", 1)
    worker = start_worker("secrets", DEVICE_FILTER=only, INGEST_TOKEN=TOKEN,
                          KAFKA_SASL_USERNAME="worker", KAFKA_SASL_PASSWORD=SASL_PASSWORD)
    answers = []
    for _ in range(60):
        try:
            answers = [_get(worker.web_port, path) for path in
                       ("/pipeline/throughput", "/pipeline/db", "/metrics", "/dashboard")]
            break
        except OSError:
            await asyncio.sleep(1)
    assert answers, "the worker's web server never answered"
    await asyncio.sleep(3)
    worker.stop()
    log = worker.log_text()
    assert "ingest starting with settings" in log  # settings were logged, redacted
    for secret in (TOKEN, SASL_PASSWORD):
        assert secret not in log
        assert all(secret not in answer for answer in answers)

"""Device tokens on a real worker of the local stack: each device writes only its own
readings (202), another device's reading gets 403, a forged or missing token 401; a
refused request stores nothing, counted in the database once the accepted ones are in.
Rotation: the previous secret's tokens work while both are set, and stop after."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
from datetime import datetime

import pytest

from tests.stack import REPO, Worker, count_rows, fleet, rows_at_least, unique, wait_for
from tests.web.test_ingest_integration import post, reading, stored, web_ready
from web.credentials import device_token

pytestmark = pytest.mark.integration

GATEWAY = "integration-gateway-token-91ab"
SECRET = "integration-device-secret-" + "4e" * 8
NEW_SECRET = "integration-new-device-secret-" + "7a" * 8


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cli_token(device: str, secret: str) -> str:
    """The token ``faust -A streams.app device-token`` prints on its last line."""
    done = subprocess.run([str(REPO / ".venv/bin/faust"), "-A", "streams.app", "device-token",
                           device], cwd=REPO, env={"PATH": "/usr/bin:/bin",
                                                   "DEVICE_TOKEN_SECRET": secret},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


async def test_each_device_writes_only_its_own_readings(start_worker) -> None:
    (mine, other, gatewayed), only = fleet("devtoken-", 3)
    worker = start_worker("device-tokens", DEVICE_FILTER=only, INGEST_TOKEN=GATEWAY,
                          DEVICE_TOKEN_SECRET=SECRET)
    await web_ready(worker)
    token = cli_token(mine, SECRET)
    assert token == device_token(SECRET, mine)
    accepted = [reading(mine, 0), reading(mine, 1)]
    assert await post(worker, accepted, bearer(token)) == (202, {"accepted": 2})

    refused = {
        403: [([reading(other, 5)], bearer(token)),
              ([reading(mine, 6), reading(other, 7)], bearer(token))],
        401: [([reading(other, 8)], bearer(token.replace(mine, other, 1))),
              ([reading(mine, 9)], bearer(device_token("x" * 32, mine))),
              ([reading(mine, 10)], {})],
    }
    for code, requests in refused.items():
        for body, headers in requests:
            status, answer = await post(worker, body, headers)
            assert status == code and "error" in answer, (code, body)
    assert await post(worker, [reading(gatewayed, 11)], bearer(GATEWAY)) == (
        202, {"accepted": 1})

    await wait_for(lambda: rows_at_least([mine, gatewayed], 3), 90, "the accepted rows")
    expected = {(r["device_id"], m, datetime.fromisoformat(r["time"])): float(v)
                for r in accepted for m, v in r["metrics"].items()}
    assert await stored([mine]) == expected  # none of the refused readings of ``mine``
    assert await count_rows([other]) == 0
    assert token not in worker.log_text() and SECRET not in worker.log_text()


async def test_rotation_accepts_both_secrets_then_only_the_new_one(start_worker) -> None:
    (device,), only = fleet("devrotate-", 1)
    old, new = device_token(SECRET, device), device_token(NEW_SECRET, device)
    bodies = [[reading(device, s)] for s in range(4)]
    worker: Worker = start_worker("rotation-both", DEVICE_FILTER=only,
                                  DEVICE_TOKEN_SECRET=NEW_SECRET,
                                  DEVICE_TOKEN_SECRET_PREVIOUS=SECRET)
    await web_ready(worker)
    assert await post(worker, bodies[0], bearer(old)) == (202, {"accepted": 1})
    assert await post(worker, bodies[1], bearer(new)) == (202, {"accepted": 1})
    worker.stop(timeout=30)

    worker = start_worker("rotation-done", DEVICE_FILTER=only, DEVICE_TOKEN_SECRET=NEW_SECRET)
    await web_ready(worker)
    status, _ = await post(worker, bodies[2], bearer(old))
    assert status == 401
    assert await post(worker, bodies[3], bearer(new)) == (202, {"accepted": 1})
    await wait_for(lambda: rows_at_least([device], 3), 90, "the three accepted readings")
    assert await stored([device]) == {
        (r["device_id"], m, datetime.fromisoformat(r["time"])): float(v)
        for i in (0, 1, 3) for r in bodies[i] for m, v in r["metrics"].items()}


async def test_the_simulator_posts_each_device_with_its_own_token(start_worker) -> None:
    prefix = unique("devsim-") + "-"
    worker = start_worker("device-token-simulator", DEVICE_FILTER=re.escape(prefix),
                          DEVICE_TOKEN_SECRET=SECRET)
    await web_ready(worker)
    done = await asyncio.to_thread(
        subprocess.run,
        [str(REPO / ".venv/bin/faust"), "-A", "streams.app", "simulate", "--devices", "3",
         "--metrics", "2", "--count", "30", "--rate", "0", "--prefix", prefix,
         "--ingest-url", f"http://127.0.0.1:{worker.web_port}/ingest"],
        cwd=REPO, env={**os.environ, "DEVICE_TOKEN_SECRET": SECRET},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "device tokens" in done.stdout
    devices = [f"{prefix}{i:05d}" for i in range(3)]
    await wait_for(lambda: rows_at_least(devices, 60), 90, "the simulated readings' rows")
    assert await count_rows(devices) == 60
    assert [await count_rows([d]) for d in devices] == [20, 20, 20]

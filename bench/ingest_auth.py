"""What device tokens cost POST /ingest: requests per second with the gateway's token and
with per-device tokens, against the same real worker in the same run.

The worker runs with INGEST_TOKEN and DEVICE_TOKEN_SECRET (and a previous secret, as while
rotating: every secret is tried on each request) and publishes to a Tansu broker of the
benchmark's own in shared topic mode; it consumes nothing. Each round posts ``--requests``
one-reading bodies, ``--concurrency`` at a time, first with the gateway token, then each
device with its own token; the medians of ``--rounds`` rounds are compared. The credential
check alone is timed in this process too, since Kafka's acknowledgements dominate a
request.

    .venv/bin/python -m bench.ingest_auth   # writes bench/results/ingest_auth.json
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.private_broker import running_broker
from bench.queries import RESULTS, bench_worker, save_results
from streams.settings import Settings
from web.credentials import IngestCredentials, device_token

GATEWAY = "bench-gateway-token-" + "0" * 12
SECRET, PREVIOUS = "bench-device-secret-" + "1" * 16, "bench-old-secret-" + "2" * 16


def bodies(devices: list[str], count: int) -> list[tuple[str, bytes]]:
    """``count`` one-reading bodies, round-robin over ``devices``: (device, body)."""
    now = datetime.now(timezone.utc) - timedelta(minutes=1)
    return [(d, orjson.dumps({"device_id": d, "metrics": {"t": float(i)},
                              "time": (now + timedelta(microseconds=i)).isoformat()}))
            for i, d in ((i, devices[i % len(devices)]) for i in range(count))]


async def post_all(url: str, requests: list[tuple[str, bytes]], token_of: dict[str, str],
                   concurrency: int) -> float:
    """Post every body with its device's token; the requests per second. Fails on any
    answer but 202."""
    queue = list(reversed(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            while queue:
                device, body = queue.pop()
                headers = {"Authorization": f"Bearer {token_of[device]}"}
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"POST /ingest: {response.status} "
                                           f"{await response.text()}")
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return len(requests) / (time.perf_counter() - t0)


def time_check(devices: list[str], calls: int) -> dict[str, float]:
    """Microseconds per credential check in this process: gateway vs device token."""
    credentials = IngestCredentials(GATEWAY, (SECRET, PREVIOUS))
    headers = {"gateway": [f"Bearer {GATEWAY}"] * len(devices),
               "device": [f"Bearer {device_token(SECRET, d)}" for d in devices]}
    result = {}
    for name, values in headers.items():
        t0 = time.perf_counter()
        for i in range(calls):
            credentials.caller(values[i % len(values)])
        result[f"{name}_us"] = round((time.perf_counter() - t0) / calls * 1e6, 2)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    devices = [f"bench-auth-{n:04d}" for n in range(args.devices)]
    tokens = {"gateway": {d: GATEWAY for d in devices},
              "device": {d: device_token(SECRET, d) for d in devices}}
    rates: dict[str, list[float]] = {mode: [] for mode in tokens}
    async with running_broker("bench-ingest-auth") as broker:
        worker = bench_worker(Settings.from_env(), **broker.worker_env(), TOPIC_MODE="shared",
                              INGEST_TOKEN=GATEWAY, DEVICE_TOKEN_SECRET=SECRET,
                              DEVICE_TOKEN_SECRET_PREVIOUS=PREVIOUS).start()
        try:
            url = f"http://127.0.0.1:{worker.web_port}/ingest"
            await worker.answering("/ingest", 405)  # GET /ingest: the web server is up
            await post_all(url, bodies(devices, args.requests // 5), tokens["gateway"],
                           args.concurrency)  # warm-up: producer, topic, connections
            for round_ in range(args.rounds):
                for mode, token_of in tokens.items():
                    rate = await post_all(url, bodies(devices, args.requests), token_of,
                                          args.concurrency)
                    rates[mode].append(round(rate))
                    print(f"  round {round_ + 1}, {mode} tokens: {rate:,.0f} requests/s",
                          flush=True)
        finally:
            worker.stop()
    medians = {mode: statistics.median(r) for mode, r in rates.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {"requests_per_round": args.requests, "concurrency": args.concurrency,
                  "devices": args.devices, "rounds": args.rounds,
                  "readings_per_request": 1, "secrets": 2},
        "requests_per_s": rates,
        "median_requests_per_s": medians,
        "device_over_gateway": round(medians["device"] / medians["gateway"], 3),
        "credential_check": time_check(devices, 200_000),
    }


def report(results: dict[str, Any]) -> list[str]:
    medians, check = results["median_requests_per_s"], results["credential_check"]
    return [f"POST /ingest, {results['setup']['concurrency']} at a time: gateway token "
            f"{medians['gateway']:,.0f} requests/s, device tokens {medians['device']:,.0f} "
            f"(ratio {results['device_over_gateway']}; medians of "
            f"{results['setup']['rounds']} rounds)",
            f"credential check: gateway {check['gateway_us']} us, device token "
            f"{check['device_us']} us (two secrets tried)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round and mode")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "ingest_auth.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    save_results(results, args.output, report(results))


if __name__ == "__main__":
    main()

"""The baseline: the same job done the simplest way, for ``make bench`` to compare against.

A Faust agent takes batches with ``stream.take()``, parses each message with orjson,
flattens the readings into points and COPYs them into ``bench_baseline_readings``: no
validation beyond parsing, no dead letters, no dedupe, no aggregates, offsets acked by
``take()``. Run with ``BENCH_TOPICS=t1,t2 BENCH_RUN=name faust -A bench.baseline worker``.

Each batch also adds its point count to ``bench_baseline_progress`` in the same
transaction, so the bench sees progress with a cheap, exact query instead of counting a
growing table (our worker's counterpart is its own count of committed rows).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

import asyncpg
import faust
import orjson

from sinks.postgres import connect_kwargs
from streams.settings import Settings

settings = Settings.from_env()
topics = [t for t in os.environ.get("BENCH_TOPICS", "").split(",") if t]
run = os.environ.get("BENCH_RUN", "")

app = faust.App(
    settings.worker.app_id,
    broker=[f"kafka://{b}" for b in settings.kafka.brokers.split(",")],
    store="memory://",
    datadir=f"{settings.worker.data_dir}/{settings.worker.app_id}",
    key_serializer="raw",
    value_serializer="raw",
    web_port=settings.web.port,
    broker_session_timeout=settings.kafka.session_timeout,
    broker_heartbeat_interval=max(settings.kafka.session_timeout / 10, 0.5),
    consumer_auto_offset_reset="earliest",
)

TABLE = """
CREATE TABLE IF NOT EXISTS bench_baseline_readings (
    time timestamptz NOT NULL, device_id text NOT NULL, metric text NOT NULL,
    value double precision NOT NULL);
CREATE TABLE IF NOT EXISTS bench_baseline_progress (run text NOT NULL, points bigint NOT NULL)
"""


def _time(value: object) -> datetime:
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, timezone.utc)
    return datetime.fromisoformat(str(value))


@app.agent(app.topic(*topics) if topics else app.topic("bench-baseline-idle"))
async def store(stream: faust.StreamT) -> None:
    # as the owner: the baseline's own tables are created in the public schema
    pool = await asyncpg.create_pool(min_size=1, max_size=2,
                                     **connect_kwargs(settings.as_owner()))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(TABLE)
    async for values in stream.take(5000, within=0.2):
        rows: list[tuple[datetime, str, str, float]] = []
        for value in values:
            decoded = orjson.loads(value)
            for reading in decoded if isinstance(decoded, list) else [decoded]:
                moment = _time(reading["time"])
                rows.extend((moment, reading["device_id"], metric, float(v))
                            for metric, v in reading["metrics"].items())
        async with pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table("bench_baseline_readings", records=rows)
            await conn.execute("INSERT INTO bench_baseline_progress VALUES ($1, $2)",
                               run, len(rows))

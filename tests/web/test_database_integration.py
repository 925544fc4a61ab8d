"""/pipeline/db and /metrics of a real worker against the shared database and pgBouncer,
and /pipeline/db of a worker whose database is unreachable."""
from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import PrivateBroker, db_connect, free_port
from tests.web.worker_web import (
    get,
    new_device_topic,
    produce,
    reading,
    wait_for_answer,
)

pytestmark = pytest.mark.integration


async def _license() -> str | None:
    conn = await db_connect()
    try:
        async with conn.transaction():
            return await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    finally:
        await conn.close()


async def test_database_state_and_metrics(private_broker: PrivateBroker, start_worker) -> None:
    device, topic = await new_device_topic(private_broker, "webdb-", partitions=1)
    await produce(private_broker, topic, device.encode(),
                  {0: [reading(device, i) for i in range(20)]})
    worker = start_worker("web-db", **private_broker.worker_env())
    await wait_for_answer(worker, "/pipeline/throughput", lambda t: t["sink_batches_total"] > 0,
                          "a first batch written")

    state = await wait_for_answer(worker, "/pipeline/db", lambda s: s["available"],
                                  "a database sample")
    assert state["error"] is None and state["sample_age_seconds"] < 30
    assert {"size", "idle", "in_use", "max"} == set(state["pools"]["stats"])
    pools = state["pgbouncer"]["pools"]
    assert any(p["database"] == "devicestream" and p["pool_mode"] == "transaction" for p in pools)
    assert any(s["database"] == "devicestream" and s["total_xact_count"] > 0
               for s in state["pgbouncer"]["stats"])
    postgres = state["postgres"]
    assert 0 < postgres["cache_hit_ratio"] <= 1
    assert postgres["database_bytes"] > 0
    assert postgres["wal"]["position_bytes"] > 0
    assert postgres["wal"]["directory_bytes"] > 0  # the stack's user has pg_monitor
    assert set(postgres["checkpoints"]) == {"timed", "requested"}
    readings = next(t for t in state["hypertables"] if t["name"] == "readings")
    assert readings["total_bytes"] > 0 and readings["chunks"] >= 1
    assert readings["approximate_rows"] >= 0
    if await _license() == "apache":
        assert state["compression"] == {"state": "unavailable: apache build", "chunks_due": 0}
    else:
        assert state["compression"]["state"] in ("enabled", "disabled")
    statements = state["top_statements"]
    assert isinstance(statements, list) and statements, statements
    assert all("devicestream-stats" not in s["query"] for s in statements)
    assert {"queryid", "calls", "total_seconds", "mean_seconds", "rows", "query"} <= set(
        statements[0])

    status, text = await get(worker, "/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name: str, **labels: str) -> Any:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("devicestream_messages_total") == 20
    assert value("devicestream_points_total") == 60
    assert value("devicestream_db_up") == 1
    assert value("devicestream_pgbouncer_up") == 1
    assert value("devicestream_db_size_bytes") == pytest.approx(postgres["database_bytes"], rel=0.5)
    readings_name = f"{readings['schema']}.{readings['name']}"
    assert value("devicestream_hypertable_bytes", hypertable=readings_name, kind="table") > 0
    assert value("devicestream_consumer_lag_messages", scope="worker") is not None
    assert value("devicestream_sink_write_latency_seconds", quantile="0.99") > 0
    assert value("process_cpu_seconds_total") > 0
    assert value("devicestream_pgbouncer_transactions_total", database="devicestream") > 0


async def test_database_down_is_reported_not_a_500(private_broker: PrivateBroker,
                                                   start_worker) -> None:
    worker = start_worker("web-db-down", DB_PORT=str(free_port()), **private_broker.worker_env())
    state = await wait_for_answer(worker, "/pipeline/db", lambda s: True, "a database sample")
    assert state["available"] is False
    assert "Connect" in state["error"] or "refused" in state["error"], state["error"]
    assert "error" in state["pgbouncer"]
    assert state["postgres"] is None and state["hypertables"] is None
    status, text = await get(worker, "/metrics")
    assert status == 200
    assert "devicestream_db_up 0.0" in text

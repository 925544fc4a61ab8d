"""The Faust application: run ``faust -A streams.app worker -l info`` on every node.

Settings come from the environment (see ``streams.settings``); the agents, tasks, web
views and commands register themselves on ``app`` when imported at the end of this module.
"""
from __future__ import annotations

from pathlib import Path

from streams.faust_internals import App, GrowingTopic
from streams.settings import Settings
from streams.stats import PipelineStats
from streams.subscription import subscribe_existing
from streams.topics import broker_credentials, is_ingest_topic
from streams.worker import worker_class
from web.access import read_access
from web.errors import json_errors

settings = Settings.from_env()
Path(settings.worker.data_dir).mkdir(parents=True, exist_ok=True)  # Faust makes only its own folder

app = App(
    settings.worker.app_id,
    broker=[f"kafka://{broker}" for broker in settings.kafka.brokers.split(",")],
    broker_credentials=broker_credentials(settings),
    store="memory://",
    datadir=f"{settings.worker.data_dir}/{settings.worker.app_id}",
    key_serializer="raw",
    value_serializer="raw",
    web_port=settings.web.port,
    web_bind=settings.web.bind,
    web_application_options={"middlewares": [json_errors, read_access(settings.web.read_token)]},
    broker_session_timeout=settings.kafka.session_timeout,
    broker_heartbeat_interval=max(settings.kafka.session_timeout / 10, 0.5),
    broker_rebalance_timeout=max(settings.kafka.session_timeout * 3, 30),
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    topic_partitions=settings.topics.partitions,
    stream_wait_empty=True,
    fetch_max_wait=settings.kafka.fetch_max_wait,
    feed_topics=is_ingest_topic,
    Worker=worker_class(
        settings.worker.shutdown_timeout,
        prepare=lambda: subscribe_existing(device_topics, settings),
    ),
)

device_topics: GrowingTopic = GrowingTopic(app, key_serializer="raw", value_serializer="raw")
pipeline_stats = PipelineStats()

# Importing these registers the agents, commands, web routes and timers on ``app``.
import agents.ingest  # noqa: E402,F401  (the ingest agent)
import streams.commands  # noqa: E402,F401  (migrate, simulate, replay, device-token)
import web.views  # noqa: E402,F401  (the web routes)
import web.ingest  # noqa: E402,F401  (POST /ingest)
import streams.maintenance  # noqa: E402,F401  (the maintenance command and timer)
import web.queries  # noqa: E402,F401  (the /devices/{id}/... routes)
import web.health  # noqa: E402,F401  (/health/* and the stall watchdog)

"""The Faust application object and what its parts share: the settings, the growing
device-topic channel and the pipeline's counters.

Settings come from the environment (see ``streams.settings``). The agents, web views,
timers and commands import ``app`` from here and register themselves on it; ``streams.app``
imports them all. Nothing here imports them, so any of them imports on its own.
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

"""Command-line entry points: ``faust -A streams.app migrate | simulate | replay |
device-token``."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import click
from faust.cli import AppCommand, option

from producers.device_producer import DeviceProducer, ProducerConfig
from producers.ingest_client import IngestClient
from producers.simulator import FleetConfig, Progress, run_fleet
from schema.migrate import migrate as apply_migrations
from schema.roles import grant_privileges
from sinks.postgres import connect
from streams.application import app, settings
from streams.replay import ReplayError, parse_since
from streams.replay import replay as replay_offsets
from streams.settings import Compression, ConfigError, TopicMode
from streams.subscription import followed_topics
from streams.topics import PUBLISHING_MODES, InvalidDeviceId, check_device_id, publishing_mode
from web.credentials import device_token as derive_device_token


@app.command()
async def migrate(self: AppCommand) -> None:
    """Create or upgrade the database schema as the owner role (DB_OWNER_USER), then grant
    the workers' and the read-only role their privileges (safe to run any number of times)."""
    conn = await connect(settings.as_owner())
    try:
        applied = await apply_migrations(conn)
        granted = await grant_privileges(conn, settings.db.user, settings.read_db.user)
    finally:
        await conn.close()
    if applied:
        self.say(f"applied migrations: {', '.join(applied)}")
    else:
        self.say("schema is up to date")
    if granted:
        self.say(f"privileges granted to: {', '.join(granted)}")


def _ingest_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--ingest-url: an http(s) URL ending in /ingest, with a credential to send there."""
    if value is None:
        return None
    if not value.startswith(("http://", "https://")) or not value.rstrip("/").endswith("/ingest"):
        raise click.BadParameter("must be an http(s) URL of a worker's /ingest, e.g. "
                                 "http://127.0.0.1:6066/ingest")
    if not (settings.web.device_token_secret or settings.web.ingest_token):
        raise click.UsageError("--ingest-url needs DEVICE_TOKEN_SECRET (device tokens) or "
                               "INGEST_TOKEN (a gateway's)")
    return value.rstrip("/")


def _topic_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> TopicMode:
    """--topic-mode, or TOPIC_MODE: one a producer publishes in, checked before anything
    runs (a usage error, exit 2). TOPIC_MODE=both is the workers' mode while moving to
    shared; it does not matter with --ingest-url (the worker publishes)."""
    mode = TopicMode(value) if value else settings.topics.mode
    if ctx.params.get("ingest_url") is not None:  # given on the command line: processed first
        return mode
    try:
        return publishing_mode(mode)
    except ConfigError as exc:
        raise click.UsageError(f"{exc} (or pass --topic-mode)") from None


@app.command(
    option("--devices", type=click.IntRange(1), default=10, show_default=True,
           help="Number of simulated devices."),
    option("--metrics", type=click.IntRange(1, 1000), default=5, show_default=True,
           help="Metrics per reading."),
    option("--per-message", type=click.IntRange(1), default=10, show_default=True,
           help="Readings of one device batched into one message, at most."),
    option("--rate", type=click.FloatRange(0), default=1000.0, show_default=True,
           help="Readings per second over the whole fleet (0 = as fast as possible)."),
    option("--duration", type=click.FloatRange(0), default=0.0, show_default=True,
           help="Stop after this many seconds (0 = no limit)."),
    option("--count", type=click.IntRange(0), default=0, show_default=True,
           help="Stop after this many readings (0 = no limit)."),
    option("--prefix", default="sim-", show_default=True, help="Device id prefix."),
    option("--seed", type=int, default=None, help="Random seed (repeatable values)."),
    option("--compression", type=click.Choice([c.value for c in Compression]), default=None,
           help="Message compression  [default: PRODUCER_COMPRESSION, snappy]"),
    option("--linger", type=click.FloatRange(0), default=None,
           help="Seconds a device's readings may wait to fill a message  "
                "[default: PRODUCER_LINGER, 0.05]"),
    option("--topic-mode", type=click.Choice([m.value for m in PUBLISHING_MODES]), default=None,
           callback=_topic_mode,
           help="per-device: device-data-{id} topics; shared: one device-data topic "
                "keyed by device  [default: TOPIC_MODE, per-device]"),
    option("--ingest-url", default=None, callback=_ingest_url,
           help="POST the readings to this worker URL's /ingest instead of publishing to "
                "Kafka: each device with its own token (DEVICE_TOKEN_SECRET), or with "
                "INGEST_TOKEN as a gateway when no secret is set."),
)
async def simulate(
    self: AppCommand,
    devices: int,
    metrics: int,
    per_message: int,
    rate: float,
    duration: float,
    count: int,
    prefix: str,
    seed: int | None,
    compression: str | None,
    linger: float | None,
    topic_mode: TopicMode,
    ingest_url: str | None,
) -> None:
    """Publish simulated device readings straight to Kafka (through DeviceProducer), or
    post them to a worker's POST /ingest (--ingest-url)."""
    fleet = FleetConfig(devices=devices, metrics=metrics, rate=rate, duration=duration,
                        count=count, prefix=prefix, seed=seed)

    def report(progress: Progress) -> None:
        self.say(progress.line())

    if ingest_url is not None:
        secret = settings.web.device_token_secret
        client = (IngestClient(ingest_url, token_for=lambda d: derive_device_token(secret, d))
                  if secret else IngestClient(ingest_url, gateway=settings.web.ingest_token))
        self.say(f"simulating {devices} devices x {metrics} metrics at "
                 f"{'max' if not rate else f'{rate:g}'} readings/s to {ingest_url} "
                 f"({'device tokens' if secret else 'the gateway token'})")
        async with client:
            await run_fleet(client, fleet, report)
        return
    run_settings = replace(settings, topics=replace(settings.topics, mode=topic_mode))
    overrides: dict[str, object] = {"max_batch_readings": per_message}
    if compression is not None:
        overrides["compression"] = Compression(compression).codec
    if linger is not None:
        overrides["linger"] = linger
    config = ProducerConfig.from_settings(run_settings, **overrides)
    layout = ("one shared topic" if run_settings.topics.mode is TopicMode.SHARED
              else "per-device topics")
    self.say(f"simulating {devices} devices x {metrics} metrics at "
             f"{'max' if not rate else f'{rate:g}'} readings/s to {settings.kafka.brokers} "
             f"({layout}, {config.compression or 'no'} compression)")
    async with DeviceProducer(run_settings, config) as producer:
        await run_fleet(producer, fleet, report)


def _since(ctx: click.Context, param: click.Parameter, value: str) -> datetime:
    """``--since`` checked before anything runs: a bad one is a usage error (exit 2)."""
    try:
        return parse_since(value)
    except ReplayError as exc:
        raise click.BadParameter(str(exc)) from None


@app.command(
    option("--since", required=True, callback=_since,
           help="RFC 3339 date-time with a zone (e.g. 2026-12-04T10:00:00Z): replay every "
                "device-topic record at or after it."),
    option("--dry-run", is_flag=True, default=False,
           help="Print the per-partition plan; commit nothing."),
)
async def replay(self: AppCommand, since: datetime, dry_run: bool) -> None:
    """Rewind the workers' committed offsets to --since (after a database restore)."""
    try:
        await replay_offsets(settings, app.conf.id, followed_topics(settings), since,
                             apply=not dry_run, say=self.say)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None


def _token_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """DEVICE_ID checked, and DEVICE_TOKEN_SECRET present, before anything runs: a usage
    error (exit 2) otherwise."""
    if not settings.web.device_token_secret:
        raise click.UsageError("DEVICE_TOKEN_SECRET is not set: device tokens derive from it")
    try:
        return check_device_id(value)
    except InvalidDeviceId as exc:
        raise click.BadParameter(str(exc)) from None


@app.command(click.argument("device_id", callback=_token_device))
async def device_token(self: AppCommand, device_id: str) -> None:
    """Print DEVICE_ID's token for POST /ingest (Authorization: Bearer <token>) on the last
    line, derived from DEVICE_TOKEN_SECRET: give it to that device only."""
    print(derive_device_token(settings.web.device_token_secret, device_id))

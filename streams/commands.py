"""Command-line entry points: ``faust -A streams.app migrate | simulate``."""
from __future__ import annotations

from dataclasses import replace

import click
from faust.cli import AppCommand, option

from producers.device_producer import DeviceProducer, ProducerConfig
from producers.simulator import FleetConfig, Progress, run_fleet
from schema.migrate import migrate as apply_migrations
from sinks.postgres import connect
from streams.app import app, settings


@app.command()
async def migrate(self: AppCommand) -> None:
    """Create or upgrade the database schema (safe to run any number of times)."""
    conn = await connect(settings)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    if applied:
        self.say(f"applied migrations: {', '.join(applied)}")
    else:
        self.say("schema is up to date")


@app.command(
    option("--devices", type=click.IntRange(1), default=10, show_default=True,
           help="Number of simulated devices."),
    option("--metrics", type=click.IntRange(1, 1000), default=5, show_default=True,
           help="Metrics per reading."),
    option("--per-message", type=click.IntRange(1), default=10, show_default=True,
           help="Readings batched into one message (per device)."),
    option("--rate", type=click.FloatRange(0), default=1000.0, show_default=True,
           help="Readings per second over the whole fleet (0 = as fast as possible)."),
    option("--duration", type=click.FloatRange(0), default=0.0, show_default=True,
           help="Stop after this many seconds (0 = no limit)."),
    option("--count", type=click.IntRange(0), default=0, show_default=True,
           help="Stop after this many readings (0 = no limit)."),
    option("--prefix", default="sim-", show_default=True, help="Device id prefix."),
    option("--compression", type=click.Choice(["snappy", "gzip", "lz4", "zstd", "none"]),
           default="snappy", show_default=True, help="Message compression."),
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
    compression: str,
) -> None:
    """Publish simulated device readings straight to Kafka."""
    fleet = FleetConfig(devices=devices, metrics=metrics, rate=rate, duration=duration,
                        count=count, prefix=prefix)
    config = replace(
        ProducerConfig(),
        max_batch_readings=per_message,
        compression=None if compression == "none" else compression,
    )

    def report(progress: Progress) -> None:
        self.say(progress.line())

    self.say(f"simulating {devices} devices x {metrics} metrics at "
             f"{'max' if not rate else f'{rate:g}'} readings/s to {settings.kafka_brokers}")
    async with DeviceProducer(settings, config) as producer:
        await run_fleet(producer, fleet, report)

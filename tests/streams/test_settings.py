"""Settings: defaults fit the local stack; bad values fail at start-up, naming the variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import ConfigError, Settings


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.from_env({})
    assert (settings.kafka_brokers, settings.db_host, settings.db_port) == (
        "127.0.0.1:9092", "127.0.0.1", 6432)
    assert (settings.retention_days, settings.compress_after_days,
            settings.device_topic_partitions, settings.web_port) == (90, 7, 10, 6066)


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env({"RETENTION_DAYS": "30", "DB_HOST": "db", "KAFKA_IDEMPOTENT_PRODUCER": "true"})
    assert (settings.retention_days, settings.db_host, settings.kafka_idempotent_producer) == (
        30, "db", True)


@pytest.mark.parametrize("name, value", [
    ("RETENTION_DAYS", "ninety"), ("RETENTION_DAYS", "0"), ("DB_PORT", "70000"),
    ("DEVICE_TOPIC_PARTITIONS", "-1"), ("KAFKA_IDEMPOTENT_PRODUCER", "maybe"),
    ("SINK_LINGER", "-1"), ("SINK_WRITERS", "0"), ("SINK_WRITERS", "4"),
    ("STALL_SECONDS", "0.5"), ("STALL_EXIT", "maybe"),
])
def test_bad_values_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name.split("_")[0]):
        Settings.from_env({name: value})


def test_the_watched_disks_default_to_the_data_directory() -> None:
    assert Settings.from_env({"DATA_DIR": "/data"}).watched_disks() == ["/data"]
    assert Settings.from_env({"DISK_PATHS": "/data, /pgdata,"}).watched_disks() == [
        "/data", "/pgdata"]


def test_redacted_settings_hide_the_password() -> None:
    shown = Settings.from_env({"DB_PASSWORD": "s3cret"}).redacted()
    assert "s3cret" not in repr(shown)


def test_archive_dir_is_off_by_default_and_created_when_set(tmp_path: Path) -> None:
    assert Settings.from_env({}).archive_dir == ""
    wanted = tmp_path / "archive" / "raw"
    assert Settings.from_env({"ARCHIVE_DIR": str(wanted)}).archive_dir == str(wanted)
    assert wanted.is_dir()


def test_an_archive_dir_that_cannot_be_created_fails_at_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="ARCHIVE_DIR must be a directory this process can write"):
        Settings.from_env({"ARCHIVE_DIR": str(blocker / "archive")})


def test_the_read_database_name_defaults_to_db_name() -> None:
    # Empty means DB_NAME (web.queries.read_route); pgBouncer's read entry is another name.
    assert Settings.from_env({}).read_db_name == ""
    assert Settings.from_env({"READ_DB_NAME": "devicestream_read"}).read_db_name == (
        "devicestream_read")

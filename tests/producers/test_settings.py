"""The producer and POST /ingest settings: defaults, and bad values naming the variable."""
from __future__ import annotations

import pytest

from producers import ProducerConfig
from streams.settings import ConfigError, Settings


def test_producer_defaults_snappy_bounded_buffer_and_delivery_timeout() -> None:
    settings = Settings.from_env({})
    config = ProducerConfig.from_settings(settings)
    assert config.compression == "snappy"
    assert (config.linger, config.max_message_bytes, config.buffer_bytes,
            config.delivery_timeout) == (0.05, 512 * 1024, 32 * 1024 * 1024, 30.0)
    assert settings.producer.idempotent is False and settings.web.ingest_token == ""


def test_producer_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"PRODUCER_COMPRESSION": "ZSTD", "PRODUCER_LINGER": "0",
                                  "PRODUCER_BATCH_BYTES": "1048576",
                                  "PRODUCER_BUFFER_BYTES": "2097152",
                                  "PRODUCER_DELIVERY_TIMEOUT": "5"})
    config = ProducerConfig.from_settings(settings)
    assert (config.compression, config.linger, config.max_message_bytes, config.buffer_bytes,
            config.delivery_timeout) == ("zstd", 0.0, 1048576, 2097152, 5.0)
    assert ProducerConfig.from_settings(
        Settings.from_env({"PRODUCER_COMPRESSION": "none"})).compression is None


@pytest.mark.parametrize("name, value", [
    ("PRODUCER_COMPRESSION", "brotli"), ("PRODUCER_LINGER", "-1"),
    ("PRODUCER_BATCH_BYTES", "2000000"), ("PRODUCER_BATCH_BYTES", "10"),
    ("PRODUCER_BUFFER_BYTES", "1k"), ("PRODUCER_DELIVERY_TIMEOUT", "0"),
    ("INGEST_TOKEN", "has space"), ("INGEST_TOKEN", " lead"), ("READ_TOKEN", "has space"),
    ("DEVICE_TOKEN_SECRET", "x" * 31), ("DEVICE_TOKEN_SECRET", "x" * 31 + " "),
])
def test_bad_values_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_bad_token_is_not_echoed_and_the_token_is_redacted() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"INGEST_TOKEN": "sec ret"})
    assert "sec ret" not in str(refused.value)
    shown = Settings.from_env({"INGEST_TOKEN": "s3cret"}).redacted()
    assert shown["web"]["ingest_token"] == "***" and "s3cret" not in repr(shown)


def test_a_previous_device_secret_needs_a_current_one_of_32_characters() -> None:
    with pytest.raises(ConfigError, match="DEVICE_TOKEN_SECRET_PREVIOUS is set without"):
        Settings.from_env({"DEVICE_TOKEN_SECRET_PREVIOUS": "p" * 32})
    with pytest.raises(ConfigError, match="DEVICE_TOKEN_SECRET_PREVIOUS must be at least 32"):
        Settings.from_env({"DEVICE_TOKEN_SECRET": "n" * 32,
                           "DEVICE_TOKEN_SECRET_PREVIOUS": "p" * 31})
    both = Settings.from_env({"DEVICE_TOKEN_SECRET": "n" * 32,
                              "DEVICE_TOKEN_SECRET_PREVIOUS": "p" * 40})
    assert (both.web.device_token_secret, both.web.device_token_secret_previous) == (
        "n" * 32, "p" * 40)
    shown = repr(both.redacted())
    assert "n" * 32 not in shown and "p" * 40 not in shown

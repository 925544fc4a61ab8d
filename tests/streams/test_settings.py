"""Settings: defaults fit the local stack; bad values fail at start-up, naming the variable."""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from streams.settings import (
    Compression,
    ConfigError,
    SaslMechanism,
    SecurityProtocol,
    Settings,
    SslMode,
    TopicMode,
)


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.from_env({})
    assert (settings.kafka.brokers, settings.db.host, settings.db.port) == (
        "127.0.0.1:9092", "127.0.0.1", 6432)
    assert (settings.storage.retention_days, settings.storage.compress_after_days,
            settings.topics.partitions, settings.web.port) == (90, 7, 10, 6066)


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env({"RETENTION_DAYS": "30", "DB_HOST": "db", "KAFKA_IDEMPOTENT_PRODUCER": "true"})
    assert (settings.storage.retention_days, settings.db.host, settings.producer.idempotent) == (
        30, "db", True)


@pytest.mark.parametrize("name, value", [
    ("RETENTION_DAYS", "ninety"), ("RETENTION_DAYS", "0"), ("DB_PORT", "70000"),
    ("DEVICE_TOPIC_PARTITIONS", "-1"), ("KAFKA_IDEMPOTENT_PRODUCER", "maybe"),
    ("SINK_LINGER", "-1"), ("SINK_WRITERS", "0"), ("SINK_WRITERS", "4"),
    ("SINK_SERIES_CACHE_MB", "0"),
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
    assert Settings.from_env({}).storage.archive_dir == ""
    wanted = tmp_path / "archive" / "raw"
    assert Settings.from_env({"ARCHIVE_DIR": str(wanted)}).storage.archive_dir == str(wanted)
    assert wanted.is_dir()


def test_an_archive_dir_that_cannot_be_created_fails_at_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="ARCHIVE_DIR must be a directory this process can write"):
        Settings.from_env({"ARCHIVE_DIR": str(blocker / "archive")})


def test_the_read_database_name_defaults_to_db_name() -> None:
    # Empty means DB_NAME (web.queries.read_route); pgBouncer's read entry is another name.
    assert Settings.from_env({}).read_db.name == ""
    assert Settings.from_env({"READ_DB_NAME": "devicestream_read"}).read_db.name == (
        "devicestream_read")


SECRETS = {  # every secret variable, each with a value of its own
    "KAFKA_SASL_PASSWORD": "kafka-sasl-s3cret", "DB_PASSWORD": "db-s3cret",
    "DB_OWNER_PASSWORD": "db-owner-s3cret", "READ_DB_PASSWORD": "read-db-s3cret",
    "INGEST_TOKEN": "ingest-t0ken", "READ_TOKEN": "read-t0ken",
    "DEVICE_TOKEN_SECRET": "device-s3cret-" + "n" * 32,
    "DEVICE_TOKEN_SECRET_PREVIOUS": "previous-s3cret-" + "p" * 32,
}


def test_redacted_settings_mask_every_secret_of_every_group() -> None:
    settings = Settings.from_env(SECRETS)
    shown = settings.redacted()
    assert list(shown) == [f.name for f in fields(Settings)]  # one dict per group
    assert not [value for value in SECRETS.values() if value in repr(shown)]
    masked = sorted(f"{group}.{name}" for group, values in shown.items()
                    for name, value in values.items() if value == "***")
    assert masked == ["db.owner_password", "db.password", "kafka.sasl_password",
                      "read_db.password", "web.device_token_secret",
                      "web.device_token_secret_previous", "web.ingest_token", "web.read_token"]
    assert (shown["db"]["user"], shown["web"]["port"]) == ("devicestream", 6066)  # the rest shown
    assert settings.db.password == "db-s3cret"  # masked in the dict only


def test_the_settings_are_typed_groups_by_concern() -> None:
    settings = Settings.from_env({"DB_PORT": "5433", "SINK_BATCH_POINTS": "7", "WEB_BIND": "::"})
    assert (settings.db.port, settings.sink.batch_points, settings.web.bind) == (5433, 7, "::")
    assert Settings() == Settings.from_env({})  # the fields' defaults are the variables' defaults
    moved = replace(settings, db=replace(settings.db, port=6543))
    assert (moved.db.port, moved.db.host, moved.sink) == (6543, settings.db.host, settings.sink)


def test_as_owner_changes_only_the_database_role() -> None:
    settings = Settings.from_env({"DB_OWNER_USER": "owner", "DB_OWNER_PASSWORD": "pw"})
    owner = settings.as_owner()
    assert (owner.db.user, owner.db.password) == ("owner", "pw")
    assert owner == replace(settings, db=replace(settings.db, user="owner", password="pw"))


def test_every_field_documents_the_variable_it_is_read_from() -> None:
    """Each group's field has a docstring starting with its variable, a variable the
    group's ``from_env`` reads; no variable is documented twice."""
    documented: dict[str, str] = {}
    for group in fields(Settings):
        source = inspect.getsource(type(getattr(Settings(), group.name)))
        reads = set(re.findall(r'\benv,\s*"([A-Z][A-Z0-9_]+)"', source))
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.ClassDef)
        body = node.body
        for at, statement in enumerate(body):
            if not (isinstance(statement, ast.AnnAssign)
                    and isinstance(statement.target, ast.Name)):
                continue
            name = f"{group.name}.{statement.target.id}"
            doc = body[at + 1] if at + 1 < len(body) else None
            assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), name
            variable = re.match(r"``([A-Z][A-Z0-9_]+)``: ", doc.value.value)
            assert variable and variable.group(1) in reads, name
            assert variable.group(1) not in documented, name
            documented[variable.group(1)] = name
        assert sorted(documented[v].split(".")[0] for v in reads) == [group.name] * len(reads)
    assert len(documented) == len({f"{g.name}.{f.name}" for g in fields(Settings)
                                   for f in fields(getattr(Settings(), g.name))})


def test_the_choices_are_enums_named_in_any_case() -> None:
    default = Settings.from_env({})
    assert (default.topics.mode, default.producer.compression, default.db.sslmode,
            default.kafka.security_protocol, default.kafka.sasl_mechanism) == (
        TopicMode.PER_DEVICE, Compression.SNAPPY, SslMode.PREFER, SecurityProtocol.PLAINTEXT,
        SaslMechanism.PLAIN)
    chosen = Settings.from_env({"TOPIC_MODE": "SHARED", "PRODUCER_COMPRESSION": "Zstd",
                                "DB_SSLMODE": "VERIFY-FULL", "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
                                "KAFKA_SASL_MECHANISM": "scram-sha-512"})
    assert chosen.topics.mode is TopicMode.SHARED
    assert chosen.producer.compression is Compression.ZSTD
    assert chosen.db.sslmode is SslMode.VERIFY_FULL
    assert chosen.kafka.security_protocol is SecurityProtocol.SASL_SSL
    assert chosen.kafka.sasl_mechanism is SaslMechanism.SCRAM_SHA_512
    shown = chosen.redacted()  # by value, as the variables name them
    assert (shown["topics"]["mode"], shown["kafka"]["security_protocol"]) == ("shared", "SASL_SSL")
    assert type(shown["db"]["sslmode"]) is str


@pytest.mark.parametrize("name, choices", [
    ("TOPIC_MODE", "per-device, shared, both"),
    ("PRODUCER_COMPRESSION", "snappy, lz4, zstd, gzip, none"),
    ("DB_SSLMODE", "disable, allow, prefer, require, verify-ca, verify-full"),
    ("KAFKA_SECURITY_PROTOCOL", "plaintext, ssl, sasl_plaintext, sasl_ssl"),
    ("KAFKA_SASL_MECHANISM", "plain, scram-sha-256, scram-sha-512"),
])
def test_a_value_outside_the_choices_fails_listing_them(name: str, choices: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{name} must be one of {choices}, got 'x'")):
        Settings.from_env({name: "x"})


def test_what_the_enums_tell_their_users() -> None:
    assert [p for p in SecurityProtocol if p.uses_tls] == [SecurityProtocol.SSL,
                                                            SecurityProtocol.SASL_SSL]
    assert [p for p in SecurityProtocol if p.uses_sasl] == [SecurityProtocol.SASL_PLAINTEXT,
                                                             SecurityProtocol.SASL_SSL]
    assert [m for m in SslMode if m.verifies] == [SslMode.VERIFY_CA, SslMode.VERIFY_FULL]
    assert [c.codec for c in Compression] == ["snappy", "lz4", "zstd", "gzip", None]

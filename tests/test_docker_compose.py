"""The production deployment files (docker-compose.yml, Dockerfile, deploy/) say what they must.

No Docker engine is needed: the files are parsed and checked against the contract
(/work/shared/CONTRACT.md) and the seed design's settings.
"""
from __future__ import annotations

from collections import Counter

import configparser
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
POSTGRESQL_CONF = ROOT / "deploy" / "postgresql.conf"
PG_HBA_CONF = ROOT / "deploy" / "pg_hba.conf"
PGBOUNCER_INI = ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini"

ONE_MIB = 1_048_576
PASSWORD_REFERENCE = re.compile(r"^\$\{DB_PASSWORD:\?[^}]*\}$")
SECRET_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Z_]+)(:\?[^}]*|:-)\}$")


# --- helpers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict of strings, whether written as a map or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def kafka_properties(service: dict) -> dict[str, str]:
    """Broker properties from the apache/kafka image's KAFKA_* variables: ``_`` is ``.``,
    ``__`` is ``_`` and ``___`` is ``-`` (KAFKA_A_B -> a.b, KAFKA_A___B -> a-b)."""
    def name(key: str) -> str:
        key = key[len("KAFKA_"):].lower().replace("___", "-").replace("__", "\0")
        return key.replace("_", ".").replace("\0", "_")
    return {name(key): value for key, value in environment(service).items()
            if key.startswith("KAFKA_")}


def command(service: dict) -> list[str]:
    cmd = service.get("command")
    return cmd.split() if isinstance(cmd, str) else list(cmd or [])


def bind_mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
            if source.startswith((".", "/")):
                mounts[target] = source
    return mounts


def published_ports(service: dict) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def listener_protocols(props: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Listener name -> (container port, security protocol) of a broker's properties."""
    protocols = dict(pair.split(":") for pair in props["listener.security.protocol.map"].split(","))
    ports = {}
    for listener in props["listeners"].split(","):
        name, _, address = listener.partition("://")
        ports[name] = address.rpartition(":")[2]
    return {name: (ports[name], protocols[name]) for name in ports}


def parse_postgresql_conf(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip().strip("'")
    return settings


def size_in_bytes(value: str) -> int:
    units = {"kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
    match = re.fullmatch(r"(\d+)\s*(kB|MB|GB|TB)", value)
    assert match, f"not a size: {value!r}"
    return int(match.group(1)) * units[match.group(2)]


@pytest.fixture(scope="module")
def postgresql_conf() -> dict[str, str]:
    return parse_postgresql_conf(POSTGRESQL_CONF.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pgbouncer_ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    parser.read_string(PGBOUNCER_INI.read_text(encoding="utf-8"))
    return parser


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    instructions = []
    for line in joined:
        name, _, args = line.partition(" ")
        instructions.append((name.upper(), args.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def resolve_build_args(text: str) -> str:
    """Replace ${ARG} with the default given by a global ARG NAME=default line."""
    defaults = {}
    for name, args in dockerfile_instructions():
        if name == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            defaults[key.strip()] = value.strip()
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


# --- the compose file -----------------------------------------------------------------------

def test_compose_file_parses_and_has_the_four_services(services):
    assert {"kafka", "timescaledb", "pgbouncer", "worker"} <= set(services)
    for name in ("kafka", "timescaledb", "pgbouncer", "worker"):
        assert services[name].get("restart") in ("unless-stopped", "always"), name


def test_every_long_running_service_has_a_healthcheck(services):
    for name in ("kafka", "timescaledb", "pgbouncer", "worker"):
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_kafka_runs_kraft_with_the_seed_settings(services):
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    props = kafka_properties(kafka)
    env = environment(kafka)
    # KRaft: the node is its own controller, no ZooKeeper anywhere.
    assert set(props["process.roles"].split(",")) == {"broker", "controller"}
    assert props["node.id"] == "1"
    assert "1@kafka:9093" in props["controller.quorum.voters"]
    assert props["controller.listener.names"] == "CONTROLLER"
    assert env.get("CLUSTER_ID")
    assert not any("zookeeper" in key for key in props)
    # The seed design.
    assert props["num.network.threads"] == "8"
    assert props["num.io.threads"] == "16"
    assert int(props["log.segment.bytes"]) == 1024**3
    assert int(props["log.retention.hours"]) == 7 * 24
    assert props["compression.type"] == "snappy"
    assert props["num.partitions"] == "10"
    assert props["auto.create.topics.enable"] in ("true", "false")


def test_kafka_accepts_a_dead_lettered_one_mebibyte_reading(services):
    props = kafka_properties(services["kafka"])
    message_max = int(props["message.max.bytes"])
    # A 1 MiB reading wrapped in the dead-letter JSON must still fit.
    assert message_max > ONE_MIB + 64 * 1024
    assert int(props["replica.fetch.max.bytes"]) >= message_max


def test_kafka_serves_the_compose_network_on_9092_and_keeps_data_in_a_volume(compose, services):
    kafka = services["kafka"]
    props = kafka_properties(kafka)
    assert "CLIENT://kafka:9092" in props["advertised.listeners"].split(",")
    assert listener_protocols(props)["CLIENT"] == ("9092", "SASL_PLAINTEXT")
    assert props["log.dirs"] == "/var/lib/kafka/data"
    named = [v.split(":")[0] for v in kafka["volumes"] if not v.startswith((".", "/"))]
    assert any(v.endswith(":/var/lib/kafka/data") for v in kafka["volumes"])
    assert set(named) <= set(compose["volumes"])
    # The healthcheck's JVM must not inherit the broker's multi-gigabyte heap.
    test = " ".join(kafka["healthcheck"]["test"])
    assert "kafka-broker-api-versions" in test and "KAFKA_HEAP_OPTS=" in test


def test_worker_gets_every_contract_environment_variable(services):
    env = environment(services["worker"])
    assert env["KAFKA_BROKERS"] == "${KAFKA_BROKERS:-kafka:9092}"  # all nodes in a cluster
    assert env["DB_HOST"] == "pgbouncer"
    assert env["DB_PORT"] == "6432"
    assert env["DB_NAME"] == "devicestream"
    assert env["DB_USER"] == "devicestream"
    assert PASSWORD_REFERENCE.match(env["DB_PASSWORD"])
    assert env["WEB_PORT"] == "6066"
    assert env["RETENTION_DAYS"] == "90"
    assert env["COMPRESS_AFTER_DAYS"] == "7"
    assert env["DEVICE_TOPIC_PARTITIONS"] == "10"
    assert env["KAFKA_IDEMPOTENT_PRODUCER"] == "true"
    assert env["BROKER_SESSION_TIMEOUT"] == "60"
    # The web server must listen beyond the container's loopback to be reachable at all.
    assert env["WEB_BIND"] == "0.0.0.0"


def test_workers_reach_the_database_only_through_pgbouncer(services, pgbouncer_ini):
    env = environment(services["worker"])
    assert (env["DB_HOST"], env["DB_PORT"]) == ("pgbouncer", "6432")
    assert pgbouncer_ini["pgbouncer"]["listen_port"] == "6432"
    target = pgbouncer_ini["databases"]["devicestream"]
    assert "host=timescaledb" in target and "port=5432" in target
    # PostgreSQL publishes no port: nothing outside the compose network bypasses pgBouncer.
    assert not published_ports(services["timescaledb"])


def test_workers_run_as_three_replicas_without_colliding_host_ports(services):
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 3
    assert "6066" in [str(port) for port in worker.get("expose", [])]
    for port in published_ports(worker):
        # "127.0.0.1::6066" or "6066": an ephemeral host port per replica, never a fixed one.
        parts = port.split(":")
        host_port = parts[-2] if len(parts) >= 2 else ""
        assert host_port == "", f"fixed host port {port!r} would collide between replicas"
    assert "container_name" not in worker


def test_worker_waits_for_the_kafka_users_and_started_pgbouncer(services):
    depends = services["worker"]["depends_on"]
    assert depends["kafka-security"]["condition"] == "service_completed_successfully"
    assert services["kafka-security"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert depends["pgbouncer"]["condition"] in ("service_started", "service_healthy")
    assert services["pgbouncer"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"


def test_migrate_runs_before_workers(services):
    migrate, worker = services["migrate"], services["worker"]
    assert command(migrate) == ["faust", "-A", "streams.app", "migrate"]
    assert str(migrate.get("restart", "no")) == "no"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    # Same image as the workers, so the schema matches the code that uses it.
    assert migrate["image"] == worker["image"]
    assert migrate["build"] == worker["build"]


def test_simulator_only_runs_in_the_demo_profile(services):
    simulator = services["simulator"]
    assert simulator["profiles"] == ["demo"]
    assert command(simulator)[:4] == ["faust", "-A", "streams.app", "simulate"]
    assert environment(simulator)["KAFKA_BROKERS"] == "${KAFKA_BROKERS:-kafka:9092}"
    for name in ("kafka", "timescaledb", "pgbouncer", "worker", "migrate"):
        assert "profiles" not in services[name], name


def test_pgbouncer_uses_transaction_mode_and_seed_pool_sizes(services, pgbouncer_ini):
    pgbouncer = services["pgbouncer"]
    image, _, tag = pgbouncer["image"].partition(":")
    assert image in ("edoburu/pgbouncer", "bitnami/pgbouncer")
    version = re.match(r"v?(\d+)\.(\d+)", tag)
    assert version, f"pgbouncer image tag not pinned to a version: {tag!r}"
    assert tuple(map(int, version.groups())) >= (1, 21)  # max_prepared_statements
    assert bind_mounts(pgbouncer)["/etc/pgbouncer/pgbouncer.ini"] == "./deploy/pgbouncer/pgbouncer.ini"

    ini = pgbouncer_ini["pgbouncer"]
    assert ini["pool_mode"] == "transaction"
    assert ini["listen_port"] == "6432"
    assert ini["max_client_conn"] == "1000"
    assert ini["default_pool_size"] == "50"
    assert ini["reserve_pool_size"] == "10"
    assert ini["auth_type"] == "scram-sha-256"
    assert "devicestream" in ini["admin_users"].replace(" ", "").split(",")
    assert "devicestream" in ini["stats_users"].replace(" ", "").split(",")
    assert int(ini["max_prepared_statements"]) >= 100  # asyncpg's default cache size
    # Its entrypoint writes userlist.txt from these at start: the workers' and the
    # read-only role, never the owner.
    env = environment(pgbouncer)
    assert env["DB_USER"] == "devicestream" and env["READ_DB_USER"] == "devicestream_reader"
    assert PASSWORD_REFERENCE.match(env["DB_PASSWORD"])
    assert SECRET_REFERENCE.match(env["READ_DB_PASSWORD"]).group("name") == "READ_DB_PASSWORD"
    assert not any("OWNER" in key for key in env)
    assert pgbouncer["entrypoint"] == ["/bin/sh", "/usr/local/lib/devicestream/pgbouncer-start.sh"]
    assert bind_mounts(pgbouncer)["/usr/local/lib/devicestream/pgbouncer-start.sh"] == \
        "./deploy/pgbouncer/pgbouncer-start.sh"


def test_pgbouncer_start_writes_both_users_with_quotes_doubled(tmp_path):
    script = (ROOT / "deploy/pgbouncer/pgbouncer-start.sh").read_text()
    userlist = tmp_path / "userlist.txt"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pgbouncer").write_text("#!/bin/sh\necho started \"$@\"\n")
    (fake_bin / "pgbouncer").chmod(0o755)
    done = subprocess.run(
        ["sh", "-c", script.replace("/etc/pgbouncer/userlist.txt", str(userlist))],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "DB_USER": "devicestream",
             "DB_PASSWORD": 'pa"ss', "READ_DB_USER": "devicestream_reader",
             "READ_DB_PASSWORD": "r"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started /etc/pgbouncer/pgbouncer.ini"
    assert userlist.read_text() == '"devicestream" "pa""ss"\n"devicestream_reader" "r"\n'
    assert oct(userlist.stat().st_mode & 0o777) == "0o600"


def test_pgbouncer_server_connections_fit_under_max_connections(pgbouncer_ini, postgresql_conf):
    ini = pgbouncer_ini["pgbouncer"]
    pooled = int(ini["default_pool_size"]) + int(ini["reserve_pool_size"])
    reserved = int(postgresql_conf.get("superuser_reserved_connections", "3"))
    assert pooled + 10 <= int(postgresql_conf["max_connections"]) - reserved


def test_timescaledb_uses_the_full_tsl_image_and_mounted_config(services, postgresql_conf):
    db = services["timescaledb"]
    assert db["build"]["context"] == "./deploy/timescaledb"
    image, _, tag = db["build"]["args"]["TIMESCALEDB_IMAGE"].partition(":")
    assert image == "timescale/timescaledb"  # not -ha, not an Apache-only build
    assert tag.endswith("pg17") and "oss" not in tag and "latest" not in tag  # pinned
    froms = (ROOT / "deploy/timescaledb/Dockerfile").read_text().split("FROM ")[1:]
    assert [f.split()[0] for f in froms] == ["${TIMESCALEDB_IMAGE}"]
    assert command(db) == ["postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"]
    mounts = bind_mounts(db)
    assert mounts["/etc/postgresql/postgresql.conf"] == "./deploy/postgresql.conf"
    assert POSTGRESQL_CONF.is_file()
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])

    libraries = postgresql_conf["shared_preload_libraries"].replace(" ", "").split(",")
    assert libraries[0] == "timescaledb"
    assert "pg_stat_statements" in libraries
    assert postgresql_conf["listen_addresses"] == "*"

    env = environment(db)
    assert env["POSTGRES_DB"] == "devicestream"
    assert env["POSTGRES_USER"] == "postgres"  # the superuser is nobody's login but ops'
    for name in ("POSTGRES_PASSWORD", "DB_OWNER_PASSWORD", "READ_DB_PASSWORD"):
        assert SECRET_REFERENCE.match(env[name]).group("name") == name
    assert PASSWORD_REFERENCE.match(env["DB_PASSWORD"])
    assert bind_mounts(db)["/docker-entrypoint-initdb.d/020-roles.sh"] == \
        "./deploy/timescaledb/roles.sh"
    check = " ".join(db["healthcheck"]["test"])
    assert "pg_isready" in check and "-h 127.0.0.1" in check


# The design's table for its 64 GB / 20-core host (tests/test_pg_tuning.py: the tuner's too).
DESIGN_TUNING = {
    "shared_buffers": "16GB", "effective_cache_size": "48GB", "work_mem": "256MB",
    "maintenance_work_mem": "2GB", "wal_level": "replica", "wal_buffers": "64MB",
    "min_wal_size": "4GB", "max_wal_size": "16GB", "wal_compression": "on",
    "max_parallel_workers_per_gather": "8", "max_parallel_workers": "16",
    "max_parallel_maintenance_workers": "8", "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
}


def test_postgresql_conf_has_the_design_settings_for_its_reference_host(postgresql_conf):
    conf = postgresql_conf
    assert {key: conf.get(key) for key in DESIGN_TUNING} == DESIGN_TUNING
    # 25 % and 75 % of the same host.
    assert size_in_bytes(conf["effective_cache_size"]) == 3 * size_in_bytes(conf["shared_buffers"])
    assert float(conf["checkpoint_completion_target"]) == 0.9
    # Enough worker processes for TimescaleDB's jobs plus the parallel query workers.
    assert int(conf["max_worker_processes"]) >= (
        3 + int(conf["timescaledb.max_background_workers"]) + int(conf["max_parallel_workers"])
    )
    assert int(conf["max_parallel_workers_per_gather"]) <= int(conf["max_parallel_workers"])
    assert "REFERENCE HOST" in POSTGRESQL_CONF.read_text(encoding="utf-8")


def test_postgres_accepts_the_compose_network_only_with_scram(services, postgresql_conf):
    assert postgresql_conf["hba_file"] == "/etc/postgresql/pg_hba.conf"
    assert bind_mounts(services["timescaledb"])["/etc/postgresql/pg_hba.conf"] == "./deploy/pg_hba.conf"
    assert postgresql_conf["password_encryption"] == "scram-sha-256"
    rules = [
        line.split() for line in PG_HBA_CONF.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    network_rules = [rule for rule in rules if rule[0].startswith("host")]
    assert network_rules
    assert all(rule[-1] == "scram-sha-256" for rule in network_rules)
    assert any(rule[3] == "samenet" for rule in network_rules)


CERTS = "deploy/tls/"  # made by `make certs`, never committed


def test_config_files_mounted_by_compose_exist(services):
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            if not source.removeprefix("./").startswith(CERTS):
                assert (ROOT / source).is_file(), f"{name}: {source} (for {target}) is missing"


def test_make_certs_makes_every_certificate_compose_mounts(services, tmp_path):
    done = subprocess.run(["bash", str(ROOT / "stack" / "certs.sh")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CERTS_DIR": str(tmp_path),
                                                       "KAFKA_EXTERNAL_HOST": "203.0.113.9"})
    assert done.returncode == 0, done.stderr
    mounted = {source.removeprefix("./").removeprefix(CERTS)
               for service in services.values() for source in bind_mounts(service).values()
               if source.removeprefix("./").startswith(CERTS)}
    assert {"ca.crt", "kafka/broker.pem", "postgres/server.crt", "postgres/server.key"} <= mounted
    for name in mounted:
        assert (tmp_path / name).is_file(), name
    for name, san in (("kafka/server.crt", "IP Address:203.0.113.9"),
                      ("postgres/server.crt", "DNS:timescaledb-replica")):
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"),
                                 str(tmp_path / name)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / name)],
                              capture_output=True, text=True).stdout
        assert san in text, name
    # the keys are the images' users' alone: uid 1000 (Kafka) and uid 70 (postgres)
    for name, uid in (("kafka/broker.pem", 1000), ("postgres/server.key", 70)):
        status = (tmp_path / name).stat()
        assert (status.st_uid, status.st_mode & 0o077) == (uid, 0), name


def test_no_secret_is_committed(services):
    for name, service in services.items():
        for key, value in environment(service).items():
            if "PASSWORD" in key or "TOKEN" in key:
                # Taken from the operator's environment: required, or empty by default.
                assert value and SECRET_REFERENCE.match(value), f"{name}.{key} = {value!r}"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "DB_PASSWORD:-" not in text  # no default password
    ini = PGBOUNCER_INI.read_text(encoding="utf-8").lower()
    assert "password=" not in ini.replace(" ", "")
    userlist = ROOT / "deploy" / "pgbouncer" / "userlist.txt"
    assert not userlist.exists() or not userlist.read_text(encoding="utf-8").strip()
    assert not (ROOT / "deploy" / ".env").exists()
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert ".env" in ignored  # a local .env with the password never enters the image


def test_worker_healthcheck_asks_the_readiness_route(services):
    test = " ".join(services["worker"]["healthcheck"]["test"])
    assert "http://127.0.0.1:6066/health/ready" in test
    assert "/metrics" not in test


# --- the monitoring profile -----------------------------------------------------------------

MONITORING = ("prometheus", "grafana")
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+$")


def test_prometheus_and_grafana_only_run_in_the_monitoring_profile(services):
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
        assert services[name].get("restart") in ("unless-stopped", "always"), name
        assert services[name].get("healthcheck", {}).get("test"), name
    # The pipeline never waits for monitoring.
    for name in ("kafka", "timescaledb", "pgbouncer", "migrate", "worker"):
        assert not set(services[name].get("depends_on", {})) & set(MONITORING), name


def test_monitoring_images_are_pinned_to_a_release(services):
    expected = {"prometheus": "prom/prometheus", "grafana": "grafana/grafana"}
    for name, repository in expected.items():
        image, _, tag = services[name]["image"].partition(":")
        assert image == repository, name
        assert PINNED_TAG.match(tag), f"{name}: image tag {tag!r} is not a pinned release"


def test_monitoring_ports_listen_on_loopback_only(services):
    expected = {"prometheus": "127.0.0.1:9090:9090", "grafana": "127.0.0.1:3000:3000"}
    for name, port in expected.items():
        assert published_ports(services[name]) == [port], name


def test_prometheus_mounts_its_config_and_the_alert_rules(compose, services):
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    # prometheus.yml names rule_files relative to itself: alerts.yml beside it.
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert all(v.endswith(":ro") for v in prometheus["volumes"] if v.startswith("./"))
    assert "--config.file=/etc/prometheus/prometheus.yml" in command(prometheus)
    assert "prometheus-data" in compose["volumes"]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert rules["rule_files"] == ["alerts.yml"]


def test_grafana_mounts_its_provisioning_and_the_dashboard(services):
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = "/etc/grafana/provisioning"
    assert (mounts[f"{provisioning}/datasources/datasources.yml"]
            == "./deploy/grafana/provisioning/datasources/datasources.yml")
    assert (mounts[f"{provisioning}/dashboards/dashboards.yml"]
            == "./deploy/grafana/provisioning/dashboards/dashboards.yml")
    providers = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    dashboards_dir = providers["providers"][0]["options"]["path"].rstrip("/")
    dashboards = {target: source for target, source in mounts.items()
                  if target.startswith(dashboards_dir + "/")}
    assert dashboards, f"no dashboard mounted into {dashboards_dir}"
    for target, source in dashboards.items():
        assert source.startswith("./deploy/grafana/dashboards/") and source.endswith(".json")
        json.loads((ROOT / source).read_text(encoding="utf-8"))
    assert all(v.endswith(":ro") for v in grafana["volumes"] if v.startswith("./"))


def test_grafana_takes_its_passwords_from_the_environment(services):
    env = environment(services["grafana"])
    # Optional in compose (it interpolates every profile's services, so a required one
    # would stop the pipeline's own `up`), required by the entrypoint.
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    entrypoint = " ".join(services["grafana"]["entrypoint"])
    assert '[ -z "$$GF_SECURITY_ADMIN_PASSWORD" ]' in entrypoint and "exit 1" in entrypoint
    assert "exec /run.sh" in entrypoint
    assert env["GRAFANA_DB_USER"] == "devicestream_reader"
    assert SECRET_REFERENCE.match(env["GRAFANA_DB_PASSWORD"]).group("name") == "READ_DB_PASSWORD"
    datasources = (ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
                   / "datasources.yml").read_text(encoding="utf-8")
    uncommented = "\n".join(line.split("#", 1)[0] for line in datasources.splitlines())
    for name in re.findall(r"\$\{(\w+)\}", uncommented):
        assert name in env, f"datasources.yml reads {name}, which grafana's environment lacks"


# --- the worker image -----------------------------------------------------------------------

def test_worker_image_runs_the_faust_worker(services):
    stage = final_stage()
    base = resolve_build_args(stage[0][1]).split()[0]
    assert base == "python:3.11-slim"
    cmds = [args for name, args in stage if name == "CMD"]
    assert json.loads(cmds[-1]) == ["faust", "-A", "streams.app", "worker", "-l", "info"]
    assert "6066" in [args for name, args in stage if name == "EXPOSE"]
    # The compose services all build this Dockerfile.
    for name in ("worker", "migrate", "simulator"):
        assert services[name]["build"]["context"] == "."
        assert services[name]["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


def test_worker_image_installs_the_package_from_setup_cfg():
    runs = [args for name, args in dockerfile_instructions() if name == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in runs)
    # aiokafka needs cramjam to read snappy-compressed batches.
    assert any("aiokafka[snappy]" in run or "cramjam" in run for run in runs)


def test_worker_image_runs_as_an_unprivileged_user():
    users = [args for name, args in final_stage() if name == "USER"]
    assert users, "the final stage never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = set(DOCKERIGNORE.read_text(encoding="utf-8").split())
    for entry in (".venv", ".stack", ".git", "test-output"):
        assert entry in ignored, entry
    assert "__pycache__" in ignored or "**/__pycache__" in ignored


# --- backups ---------------------------------------------------------------------------------

def test_postgres_archives_its_wal_with_pgbackrest(postgresql_conf):
    assert postgresql_conf["archive_mode"] == "on"
    assert postgresql_conf["wal_level"] in ("replica", "logical")
    assert "pgbackrest --stanza=devicestream archive-push %p" in postgresql_conf["archive_command"]
    assert 0 < int(postgresql_conf["archive_timeout"]) <= 300


def test_the_backup_service_shares_the_repository_data_and_socket_with_the_database(
        compose, services):
    db, backup = services["timescaledb"], services["backup"]
    assert backup["image"] == db["image"]  # the image with pgBackRest
    assert "pgbackrest" in (ROOT / "deploy/timescaledb/Dockerfile").read_text()
    named = {v.split(":")[1]: v.split(":")[0] for v in db["volumes"] if not v.startswith(".")}
    for path in ("/var/lib/pgbackrest", "/var/run/postgresql", "/var/lib/postgresql/data"):
        assert path in named
        assert f"{named[path]}:{path}" in backup["volumes"], path
    assert "pgbackrest-repo" in compose["volumes"]
    for service in (db, backup):
        assert bind_mounts(service)["/etc/pgbackrest/pgbackrest.conf"] == \
            "./deploy/pgbackrest/pgbackrest.conf"
    for source in bind_mounts(backup):
        assert (ROOT / bind_mounts(backup)[source]).is_file(), source
    assert environment(backup)["BACKUP_FULL_HOURS"] == "24"  # daily
    assert backup["entrypoint"][-1] == "/usr/local/lib/devicestream/backup-daily.sh"
    subprocess.run(["sh", "-n", str(ROOT / "deploy/pgbackrest/backup-daily.sh")], check=True)


def test_pgbackrest_conf_points_at_the_mounted_repository_and_data():
    conf = dict(line.split("=", 1) for line in
                (ROOT / "deploy/pgbackrest/pgbackrest.conf").read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert conf["repo1-path"] == "/var/lib/pgbackrest"
    assert conf["pg1-path"] == "/var/lib/postgresql/data"
    assert conf["pg1-socket-path"] == "/var/run/postgresql"


# --- the read replica ------------------------------------------------------------------------

def test_the_replica_streams_from_the_primary_with_its_own_volume(compose, services):
    db, replica = services["timescaledb"], services["timescaledb-replica"]
    assert replica["image"] == db["image"]  # the same pinned TimescaleDB build
    assert replica.get("restart") == "unless-stopped" and "profiles" not in replica
    assert replica["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(replica["healthcheck"]["test"])
    named = {v.split(":")[0] for v in replica["volumes"] if not v.startswith(".")}
    assert "timescaledb-replica-data" in named and "timescaledb-replica-data" in compose["volumes"]
    assert not named & {v.split(":")[0] for v in db["volumes"]} - {"pgbackrest-repo"}
    assert "pgbackrest-repo:/var/lib/pgbackrest:ro" in replica["volumes"]  # archive-get only
    mounts = bind_mounts(replica)
    assert mounts["/etc/postgresql/postgresql.conf"] == "./deploy/postgresql.conf"
    script = (ROOT / mounts[replica["entrypoint"][-1]]).read_text(encoding="utf-8")
    assert "pg_basebackup" in script and " -R " in script and "hot_standby=on" in script
    assert "config_file=/etc/postgresql/postgresql.conf" in script
    subprocess.run(["sh", "-n", str(ROOT / mounts[replica["entrypoint"][-1]])], check=True)
    env = environment(replica)
    assert (env["PRIMARY_HOST"], env["REPLICATION_USER"]) == ("timescaledb", "replicator")
    assert SECRET_REFERENCE.match(env["REPLICATION_PASSWORD"])
    assert not published_ports(replica)


def test_the_primary_admits_the_replication_role_from_the_compose_network(services):
    rules = [line.split() for line in PG_HBA_CONF.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert ["hostssl", "replication", "replicator", "samenet", "scram-sha-256"] in rules
    init = bind_mounts(services["timescaledb"])
    role_script = [src for target, src in init.items()
                   if target.startswith("/docker-entrypoint-initdb.d/")]
    assert role_script, "nothing creates the replication role"
    text = (ROOT / role_script[0]).read_text(encoding="utf-8")
    assert "REPLICATION LOGIN" in text and "REPLICATION_PASSWORD" in text
    assert environment(services["timescaledb"])["REPLICATION_PASSWORD"] == environment(
        services["timescaledb-replica"])["REPLICATION_PASSWORD"]


def test_workers_read_through_pgbouncers_replica_entry(services, pgbouncer_ini):
    env = environment(services["worker"])
    assert (env["READ_DB_HOST"], env["READ_DB_PORT"]) == ("pgbouncer", "6432")
    target = pgbouncer_ini["databases"][env["READ_DB_NAME"]]
    assert "host=timescaledb-replica" in target and "port=5432" in target
    assert "dbname=devicestream" in target
    # pgBouncer starts without the replica: reads fall back to the primary meanwhile.
    assert "timescaledb-replica" not in services["pgbouncer"].get("depends_on", {})


# --- pinned images ---------------------------------------------------------------------------

def test_every_image_is_pinned_to_a_release(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} names no image"
        tag = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", image).rpartition(":")[2]
        assert re.match(r"^v?\d+\.\d+\.\d+", tag), f"{name}: image {image!r} is not pinned"
    assert "latest" not in COMPOSE_FILE.read_text(encoding="utf-8")
    version = configparser.ConfigParser()
    version.read(ROOT / "setup.cfg")
    assert services["worker"]["image"].endswith(
        ":${DEVICESTREAM_TAG:-%s}" % version["metadata"]["version"])


# --- the cluster profile ---------------------------------------------------------------------

CLUSTER_ENV = {
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093",
    "KAFKA_REPLICATION_FACTOR": "3",
    "KAFKA_MIN_INSYNC_REPLICAS": "2",
    "KAFKA_BROKERS": "kafka:9092,kafka-2:9092,kafka-3:9092",
}


def test_the_cluster_profile_adds_two_kafka_nodes_sharing_the_first_ones_settings(
        compose, services):
    nodes = {name: services[name] for name in ("kafka", "kafka-2", "kafka-3")}
    assert services["kafka-2"]["profiles"] == services["kafka-3"]["profiles"] == ["cluster"]
    ids, external = set(), set()
    for name, node in nodes.items():
        props = kafka_properties(node)
        assert node["image"] == services["kafka"]["image"]
        assert node.get("healthcheck") == services["kafka"]["healthcheck"]
        ids.add(props["node.id"])
        assert f"CLIENT://{name}:9092" in props["advertised.listeners"].split(",")
        external |= {port.split(":")[-2] for port in published_ports(node)}
        volume = next(v.split(":")[0] for v in node["volumes"] if v.endswith(":/var/lib/kafka/data"))
        assert volume in compose["volumes"]
        # One set of replication settings for every node, from the same variables.
        assert props["default.replication.factor"] == "${KAFKA_REPLICATION_FACTOR:-1}"
        assert props["offsets.topic.replication.factor"] == "${KAFKA_REPLICATION_FACTOR:-1}"
        assert props["transaction.state.log.replication.factor"] == "${KAFKA_REPLICATION_FACTOR:-1}"
        assert props["min.insync.replicas"] == "${KAFKA_MIN_INSYNC_REPLICAS:-1}"
        assert props["transaction.state.log.min.isr"] == "${KAFKA_MIN_INSYNC_REPLICAS:-1}"
    assert ids == {"1", "2", "3"} and len(external) == 3
    assert len({v.split(":")[0] for node in nodes.values() for v in node["volumes"]
                if v.endswith(":/var/lib/kafka/data")}) == 3
    env_example = (ROOT / "deploy" / "env.example").read_text(encoding="utf-8")
    for key, value in CLUSTER_ENV.items():
        assert f"# {key}={value}" in env_example, key
    assert environment(services["worker"])["TOPIC_REPLICATION_FACTOR"] == \
        "${KAFKA_REPLICATION_FACTOR:-1}"


# --- both compose dialects validate the file as written ---------------------------------------

# Installed by `make setup` (stack/compose_tools.sh).
COMPOSE_TOOLS = {
    "docker compose v2": ROOT / ".stack" / "compose" / "v2" / "docker-compose",
    "docker-compose 1.29": ROOT / ".stack" / "compose" / "v1" / "bin" / "docker-compose",
}
PROFILES = ([], ["--profile", "cluster"], ["--profile", "monitoring"], ["--profile", "demo"],
            ["--profile", "cluster", "--profile", "monitoring", "--profile", "demo"])
REQUIRED_ENV = {"DB_PASSWORD": "x", "INGEST_TOKEN": "y", "REPLICATION_PASSWORD": "z",
                "POSTGRES_PASSWORD": "p", "DB_OWNER_PASSWORD": "o", "READ_DB_PASSWORD": "r",
                "READ_TOKEN": "t", "KAFKA_DEVICE_PASSWORD": "d" * 16,
                "KAFKA_WORKER_PASSWORD": "w" * 16}


def compose_cli(dialect: str) -> Path:
    tool = COMPOSE_TOOLS[dialect]
    if not tool.exists():
        pytest.skip(f"{dialect} is not installed at {tool.relative_to(ROOT)}: run 'make setup'")
    return tool


def run_compose(dialect: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(compose_cli(dialect)), "-f", str(COMPOSE_FILE), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **env})


@pytest.mark.parametrize("dialect", COMPOSE_TOOLS)
def test_the_tool_is_the_dialect_it_stands_for(dialect):
    out = run_compose(dialect, "version", env={}).stdout
    assert re.search(r"version v?2\." if "v2" in dialect else r"version 1\.29\.", out), out


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p[1::2]) or "default")
@pytest.mark.parametrize("dialect", COMPOSE_TOOLS)
def test_compose_config_validates(dialect, profiles):
    result = run_compose(dialect, *profiles, "config", "-q", env=REQUIRED_ENV)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dialect", COMPOSE_TOOLS)
def test_the_workers_need_a_read_token_which_prometheus_sends(dialect):
    refused = run_compose(dialect, "config", "-q",
                          env={k: v for k, v in REQUIRED_ENV.items() if k != "READ_TOKEN"})
    assert refused.returncode != 0 and "READ_TOKEN" in refused.stderr
    result = run_compose(dialect, "--profile", "monitoring", "config", env=REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["worker"]["environment"]["READ_TOKEN"] == "t"
    prometheus = services["prometheus"]
    assert prometheus["environment"]["READ_TOKEN"] == "t"
    script = prometheus["entrypoint"][2]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (worker_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "devicestream-worker"]
    token_file = "/etc/prometheus/" + worker_job["authorization"]["credentials_file"]
    # compose config keeps the $$ that escapes a shell variable from interpolation
    assert f'"$$READ_TOKEN" > {token_file}' in script and "exec /bin/prometheus" in script


@pytest.mark.parametrize("dialect", COMPOSE_TOOLS)
def test_compose_refuses_to_run_without_the_passwords(dialect):
    # one missing at a time: v2 names whichever missing variable it meets first
    result = run_compose(dialect, "config", "-q",
                         env={k: v for k, v in REQUIRED_ENV.items() if k != "DB_PASSWORD"})
    assert result.returncode != 0 and "DB_PASSWORD" in result.stderr


@pytest.mark.parametrize("dialect", COMPOSE_TOOLS)
def test_the_cluster_settings_reach_all_three_nodes_and_the_workers(dialect):
    result = run_compose(dialect, "--profile", "cluster", "config",
                         env={**REQUIRED_ENV, **CLUSTER_ENV})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("kafka", "kafka-2", "kafka-3"):
        props = kafka_properties(services[name])
        assert props["controller.quorum.voters"] == CLUSTER_ENV["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor"):
            assert props[key] == "3", (name, key)
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    worker = environment(services["worker"])
    assert worker["KAFKA_BROKERS"] == CLUSTER_ENV["KAFKA_BROKERS"]
    assert worker["TOPIC_REPLICATION_FACTOR"] == "3"


KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")


def test_every_listener_published_on_the_host_authenticates_and_encrypts(services):
    for name in KAFKA_NODES:
        props = kafka_properties(services[name])
        by_port = {port: (listener, protocol)
                   for listener, (port, protocol) in listener_protocols(props).items()}
        for published in published_ports(services[name]):
            container_port = published.rsplit(":", 1)[-1]
            listener, protocol = by_port[container_port]
            assert protocol == "SASL_SSL", f"{name} publishes {listener} ({protocol})"
            mechanisms = props["sasl.enabled.mechanisms"].split(",")
            assert mechanisms == ["SCRAM-SHA-512"], mechanisms
            prefix = f"listener.name.{listener.lower()}."
            assert props[prefix + "ssl.keystore.location"] == "/etc/kafka/tls/broker.pem"
            assert "ScramLoginModule" in props[prefix + "scram-sha-512.sasl.jaas.config"]
        # the PLAINTEXT listeners are the compose network's only
        plain = {listener for listener, (_, protocol) in listener_protocols(props).items()
                 if protocol == "PLAINTEXT"}
        assert plain == {"BROKER", "CONTROLLER"}
        assert props["authorizer.class.name"].endswith("StandardAuthorizer")
        assert props["allow.everyone.if.no.acl.found"] == "false"


def test_the_workers_authenticate_as_worker_and_the_simulator_as_device(services):
    worker, simulator = environment(services["worker"]), environment(services["simulator"])
    assert worker["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert worker["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert worker["KAFKA_SASL_USERNAME"] == "worker"
    assert "KAFKA_WORKER_PASSWORD" in worker["KAFKA_SASL_PASSWORD"]
    assert simulator["KAFKA_SASL_USERNAME"] == "device"
    assert "KAFKA_DEVICE_PASSWORD" in simulator["KAFKA_SASL_PASSWORD"]
    assert services["simulator"]["depends_on"]["kafka-security"]["condition"] == \
        "service_completed_successfully"


def acls_granted() -> Counter[tuple[str, str, str, str]]:
    """(principal, operation, resource type, name + '*' when prefixed) of every ``allow``
    line of deploy/kafka/security-setup.sh, loops unrolled."""
    script = (ROOT / "deploy" / "kafka" / "security-setup.sh").read_text()
    granted: Counter[tuple[str, str, str, str]] = Counter()
    loop: list[str] = ["-"]
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("for operation in "):
            loop = line.removeprefix("for operation in ").removesuffix("; do").split()
        elif line == "done":
            loop = ["-"]
        elif line.startswith("allow User:"):
            words = line.replace('"$APP_ID-"', "devicestream-").replace(
                '"$APP_ID"', "devicestream").split()
            principal, operation, kind = words[1], words[2], words[3].lstrip("-")
            name = words[4] if len(words) > 4 and not words[4].startswith("-") else ""
            name += "*" if "prefixed" in words else ""
            for op in (loop if operation == '"$operation"' else [operation]):
                granted[(principal, op, kind, name)] += 1
    return granted


def test_devices_may_only_write_device_data_and_device_data_topics():
    granted = acls_granted()
    device = sorted(key for key in granted if key[0] == "User:device")
    assert device == sorted((("User:device", op, "topic", name) for op in
                             ("Write", "Describe", "Create")
                             for name in ("device-data", "device-data-*")))
    # never the bare prefix, which would cover the dead-letter topic device-data.dlq
    assert not any(name == "device-data*" for _, _, _, name in granted)
    assert {key[0] for key in granted} == {"User:device", "User:worker"}


def test_workers_read_their_topics_use_their_group_and_write_the_dead_letters():
    worker = {key[1:] for key in acls_granted() if key[0] == "User:worker"}
    for name in ("device-data", "device-data-*", "device-data.dlq"):
        assert {("Read", "topic", name), ("Write", "topic", name)} <= worker
    assert ("Read", "group", "devicestream*") in worker
    assert not any(op in ("Alter", "AlterConfigs", "Delete", "All") for op, _, _ in worker)


def test_every_database_hop_of_compose_is_tls_and_verified(services, pgbouncer_ini):
    ca = "/etc/devicestream/tls/ca.crt"
    for name in ("worker", "migrate", "simulator"):
        env = environment(services[name])
        assert env["DB_SSLMODE"] == "${DB_SSLMODE:-verify-full}", name
        assert env["DB_SSLROOTCERT"] == ca, name
        assert bind_mounts(services[name])[ca] == "./deploy/tls/ca.crt", name
    bouncer = pgbouncer_ini["pgbouncer"]
    assert bouncer["client_tls_sslmode"] == "require"
    assert bouncer["server_tls_sslmode"] == "verify-full"
    assert bouncer["server_tls_ca_file"] == ca
    conf = parse_postgresql_conf(POSTGRESQL_CONF.read_text(encoding="utf-8"))
    assert conf["ssl"] == "on"
    for server in ("timescaledb", "timescaledb-replica", "pgbouncer"):
        mounts = bind_mounts(services[server])
        for file in ("server.crt", "server.key"):
            assert mounts[f"/etc/devicestream/tls/{file}"] == f"./deploy/tls/postgres/{file}"
    rules = [line.split() for line in PG_HBA_CONF.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    network = [rule for rule in rules if "samenet" in rule]
    assert network and all(rule[0] == "hostssl" for rule in network), network
    replica = (ROOT / "deploy" / "timescaledb" / "replica.sh").read_text(encoding="utf-8")
    assert f"sslmode=verify-full sslrootcert={ca}" in replica

"""TLS to the local stack's database: PostgreSQL (55432), pgBouncer (6432) and the read
replica (55433) present a certificate of the CA that `make stack-up` made
(.stack/tls/ca.crt), which verify-full accepts; a certificate from another CA is refused,
and a worker given the wrong CA stops at start-up with an error that names
DB_SSLROOTCERT."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sinks.postgres import DatabaseTLSError, check_tls, connect
from streams.settings import ConfigError, Settings, SslMode
from tests.stack import REPLICA_PORT, REPO, SETTINGS, fleet

pytestmark = pytest.mark.integration

CA = REPO / ".stack" / "tls" / "ca.crt"
PORTS = {"postgresql": 55432, "pgbouncer": SETTINGS.db.port}


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate that signed nothing of the stack's."""
    folder = tmp_path_factory.mktemp("other-ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=another CA", "-keyout", str(folder / "ca.key"),
                    "-out", str(folder / "ca.crt")], check=True, capture_output=True)
    return folder / "ca.crt"


def tls_settings(port: int, mode: SslMode, rootcert: Path | str) -> Settings:
    return replace(SETTINGS, db=replace(SETTINGS.db, host="127.0.0.1", port=port, sslmode=mode,
                                        sslrootcert=str(rootcert)))


@pytest.mark.parametrize("server", PORTS)
async def test_verify_full_connects_with_tls_to_postgresql_and_pgbouncer(server) -> None:
    conn = await connect(tls_settings(PORTS[server], SslMode.VERIFY_FULL, CA))
    try:
        # through pgBouncer this is its own connection to PostgreSQL: TLS too
        assert await conn.fetchval(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
    await check_tls(tls_settings(PORTS[server], SslMode.VERIFY_FULL, CA))


async def test_verify_full_connects_with_tls_to_the_read_replica(replica) -> None:
    conn = await connect(tls_settings(REPLICA_PORT, SslMode.VERIFY_FULL, CA))
    try:
        row = await conn.fetchrow(
            "SELECT pg_is_in_recovery() AS standby, ssl FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    assert (row["standby"], row["ssl"]) == (True, True)


@pytest.mark.parametrize("server", PORTS)
async def test_a_certificate_of_another_ca_is_refused_naming_the_setting(server,
                                                                         other_ca) -> None:
    settings = tls_settings(PORTS[server], SslMode.VERIFY_FULL, other_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(settings)
    with pytest.raises(DatabaseTLSError, match=f"DB_SSLROOTCERT={other_ca}"):
        await check_tls(settings)


def test_a_missing_root_certificate_file_fails_at_start_up() -> None:
    with pytest.raises(ConfigError, match="DB_SSLROOTCERT=/nonexistent/ca.crt"):
        Settings.from_env({"DB_SSLROOTCERT": "/nonexistent/ca.crt"})


async def test_a_worker_given_the_wrong_ca_stops_at_start_up_naming_it(start_worker,
                                                                      other_ca) -> None:
    _, only = fleet("tls-wrong-ca-", 1)
    worker = start_worker("tls-wrong-ca", DEVICE_FILTER=only, DB_SSLMODE="verify-full",
                          DB_SSLROOTCERT=str(other_ca))
    deadline = time.monotonic() + 90
    while worker.process.poll() is None:
        assert time.monotonic() < deadline, worker.log_text()[-2000:]
        await asyncio.sleep(0.5)
    log = worker.log_text()
    assert worker.process.returncode != 0
    assert f"does not verify against DB_SSLROOTCERT={other_ca}" in log, log[-2000:]

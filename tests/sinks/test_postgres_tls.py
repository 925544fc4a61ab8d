"""DB_SSLMODE as asyncpg takes it: the mode's name, or for verify-ca / verify-full a
context that verifies the server (and never falls back to plaintext)."""
from __future__ import annotations

import ssl

import pytest

from sinks.postgres import tls_argument
from streams.settings import SslMode


@pytest.mark.parametrize("mode", [m for m in SslMode if not m.verifies])
def test_a_mode_that_does_not_verify_is_passed_by_name(mode: SslMode) -> None:
    argument = tls_argument(mode, "")
    assert argument == mode.value and type(argument) is str


def test_verify_ca_and_verify_full_get_a_verifying_context() -> None:
    full, ca = tls_argument(SslMode.VERIFY_FULL, ""), tls_argument(SslMode.VERIFY_CA, "")
    assert isinstance(full, ssl.SSLContext) and isinstance(ca, ssl.SSLContext)
    assert (full.verify_mode, full.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert (ca.verify_mode, ca.check_hostname) == (ssl.CERT_REQUIRED, False)

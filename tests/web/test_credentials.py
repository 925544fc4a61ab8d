"""web.credentials: device tokens derived from a secret, and the Authorization headers."""
from __future__ import annotations

import base64

import pytest

from web.credentials import (
    ANY_DEVICE,
    Caller,
    IngestCredentials,
    basic_password,
    bearer_token,
    device_token,
    read_allowed,
)

SECRET, PREVIOUS = "s" * 32, "p" * 32


def test_a_device_token_is_the_device_id_and_an_hmac_only_the_secret_can_make() -> None:
    token = device_token(SECRET, "sensor-001")
    device, _, mac = token.rpartition(".")
    assert device == "sensor-001" and len(mac) == 43 and "=" not in mac  # 256 bits, base64url
    assert device_token(SECRET, "sensor-001") == token  # derived: nothing to store
    assert device_token(PREVIOUS, "sensor-001") != token
    assert device_token(SECRET, "sensor-002").rpartition(".")[2] != mac


def test_device_ids_with_dots_split_at_the_last_one() -> None:
    credentials = IngestCredentials(device_secrets=(SECRET,))
    token = device_token(SECRET, "site.3.pump-7")
    assert credentials.caller(f"Bearer {token}") == Caller("site.3.pump-7")


def test_the_caller_is_the_gateway_a_device_or_nobody() -> None:
    credentials = IngestCredentials("gateway-token", (SECRET, PREVIOUS))
    assert credentials.caller("Bearer gateway-token") == ANY_DEVICE
    assert credentials.caller(f"Bearer {device_token(PREVIOUS, 'd')}") == Caller("d")
    for header in (None, "", "Bearer", "Basic Z2F0ZXdheS10b2tlbg==", "Bearer gateway-token2",
                   f"Bearer {device_token('x' * 32, 'd')}"):
        assert credentials.caller(header) is None, header
    assert IngestCredentials().caller(None) == ANY_DEVICE  # nothing configured: open


@pytest.mark.parametrize("header,token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Bearer", None), ("Basic abc", None),
    (None, None), ("abc", None),
])
def test_bearer_token(header, token) -> None:
    assert bearer_token(header) == token


def test_basic_password() -> None:
    encode = lambda raw: "Basic " + base64.b64encode(raw).decode()  # noqa: E731
    assert basic_password(encode(b"user:pa:ss")) == "pa:ss"
    assert basic_password(encode(b":pw")) == "pw"
    assert basic_password(encode(b"no-colon")) is None
    assert basic_password(encode(b"\xff:\xfe")) is None
    assert basic_password("Basic not base64!") is None
    assert basic_password("Bearer x") is None


def test_read_allowed() -> None:
    assert read_allowed(None, "")
    assert read_allowed("Bearer t0ken", "t0ken")
    assert read_allowed("Basic " + base64.b64encode(b"me:t0ken").decode(), "t0ken")
    assert not read_allowed("Bearer t0ke", "t0ken")
    assert not read_allowed(None, "t0ken")

"""Who an HTTP request is: the gateway token, per-device tokens and the read token.

* ``INGEST_TOKEN``: a trusted gateway's bearer token for ``POST /ingest``, any device.
* Device tokens, with ``DEVICE_TOKEN_SECRET`` set: ``<device_id>.<mac>``, where ``mac`` is
  the unpadded base64url of HMAC-SHA256(secret, device id). They are derived, as Azure
  DPS derives device keys from a group key: the server stores nothing per device, and a
  leaked token exposes one device only. ``DEVICE_TOKEN_SECRET_PREVIOUS`` is accepted too
  while devices move to a new secret. A device id never holds a ``/``, ``+`` or ``=``
  and the mac never holds a ``.``, so the token splits at its last dot.
* ``READ_TOKEN``: every route but ``/health/*`` and ``POST /ingest``, as a bearer token or
  as the password of HTTP Basic (any user name), so a browser can open the dashboard.

Every comparison is constant-time, over the whole token. Nothing here logs.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from streams.settings import Settings

REALM = "devicestream"


def device_token(secret: str, device_id: str) -> str:
    """The ingest token of ``device_id`` under ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), device_id.encode("utf-8"), hashlib.sha256).digest()
    return f"{device_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode('ascii')}"


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic <base64(user:password)>`` header, else None."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return password if colon else None


def same_secret(given: str, expected: str) -> bool:
    """``given == expected`` in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8"))


@dataclass(frozen=True)
class Caller:
    """An authenticated ``POST /ingest`` caller. ``device_id`` is None for the gateway (or
    an open endpoint), which may write readings of any device."""

    device_id: str | None = None


ANY_DEVICE = Caller()


@dataclass(frozen=True)
class IngestCredentials:
    """What ``POST /ingest`` accepts: the gateway token and the device token secrets."""

    gateway_token: str = ""
    device_secrets: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> "IngestCredentials":
        secrets = (settings.web.device_token_secret, settings.web.device_token_secret_previous)
        return cls(settings.web.ingest_token, tuple(s for s in secrets if s))

    @property
    def required(self) -> bool:
        return bool(self.gateway_token or self.device_secrets)

    def caller(self, header: str | None) -> Caller | None:
        """Who sent a request with this ``Authorization`` header; None when it holds no
        credential accepted here."""
        if not self.required:
            return ANY_DEVICE
        token = bearer_token(header)
        if token is None:
            return None
        if self.gateway_token and same_secret(token, self.gateway_token):
            return ANY_DEVICE
        device_id, dot, _ = token.rpartition(".")
        if not dot:
            return None
        # every secret is tried, so the time taken does not tell which one matched
        matched = [same_secret(token, device_token(s, device_id)) for s in self.device_secrets]
        return Caller(device_id) if any(matched) else None


def read_allowed(header: str | None, read_token: str) -> bool:
    """Whether the header carries ``read_token`` (bearer, or HTTP Basic's password); always
    true when no read token is set."""
    if not read_token:
        return True
    given = bearer_token(header)
    if given is None:
        given = basic_password(header)
    return given is not None and same_secret(given, read_token)

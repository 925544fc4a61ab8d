"""A minimal client for pgBouncer's admin console (``SHOW POOLS``, ``SHOW STATS``, ...).

The admin console speaks only PostgreSQL's simple query protocol. asyncpg sends every
``fetch`` through the extended protocol (the console answers "extended query protocol not
supported by admin console" and drops the connection) and discards the rows of a simple
``execute``, so this module speaks the few messages needed itself: start-up,
authentication (trust, cleartext, MD5 or SCRAM-SHA-256), simple query, terminate.
Values arrive as text and are converted by their type OID (integers and numerics).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Any

from web.pg_wire import read_values

PROTOCOL_VERSION = 196608  # 3.0

_INTEGER_OIDS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOAT_OIDS = frozenset({700, 701, 1700})  # float4, float8, numeric


class AdminConsoleError(Exception):
    """The admin console refused a request or the connection broke mid-way."""


@dataclass(frozen=True)
class ScramClient:
    """The client side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it.

    PostgreSQL ignores the SCRAM user name (it takes the start-up packet's), so it stays
    empty; channel binding is not used ("n,,").
    """

    password: str
    nonce: str
    user: str = ""

    @classmethod
    def new(cls, password: str) -> "ScramClient":
        return cls(password, base64.b64encode(os.urandom(18)).decode())

    @property
    def first_message_bare(self) -> str:
        return f"n={self.user},r={self.nonce}"

    @property
    def first_message(self) -> bytes:
        return ("n,," + self.first_message_bare).encode()

    def final_message(self, server_first: str) -> tuple[bytes, bytes]:
        """The client-final message and the server signature it must answer with."""
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        if not nonce.startswith(self.nonce):
            raise AdminConsoleError("SCRAM: server nonce does not extend the client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_message_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        server_signature = hmac.digest(server_key, auth_message, "sha256")
        final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
        return final, server_signature


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def _error_text(payload: bytes) -> str:
    """The human part of an ErrorResponse: severity, SQLSTATE and message."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '')}: {fields.get('M', '?')}".strip()


def _convert(value: bytes | None, type_oid: int) -> Any:
    if value is None:
        return None
    text = value.decode(errors="replace")
    try:
        if type_oid in _INTEGER_OIDS:
            return int(text)
        if type_oid in _FLOAT_OIDS:
            number = float(text)
            return int(number) if type_oid == 1700 and number.is_integer() else number
    except ValueError:
        pass
    return text


def parse_row_description(payload: bytes) -> list[tuple[str, int]]:
    """Column names and type OIDs of a RowDescription message."""
    (count,) = struct.unpack_from("!h", payload, 0)
    position, columns = 2, []
    for _ in range(count):
        end = payload.index(b"\0", position)
        name = payload[position:end].decode()
        _table, _column, type_oid, _size, _modifier, _format = struct.unpack_from(
            "!ihihih", payload, end + 1
        )
        columns.append((name, type_oid))
        position = end + 1 + 18
    return columns


def parse_data_row(payload: bytes) -> list[bytes | None]:
    """The raw (text) values of a DataRow message."""
    (count,) = struct.unpack_from("!h", payload, 0)
    return read_values(payload, 2, count)[0]


class AdminConsole:
    """One connection to pgBouncer's admin console; ``query`` returns rows as dicts."""

    def __init__(self, host: str, port: int, user: str, password: str, *,
                 database: str = "pgbouncer", timeout: float = 5.0) -> None:
        self._address = (host, port)
        self._user, self._password, self._database = user, password, database
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def query(self, sql: str) -> list[dict[str, Any]]:
        """Run one admin command (e.g. ``SHOW POOLS``); reconnects when needed."""
        async with self._lock:
            try:
                return await asyncio.wait_for(self._query(sql), self._timeout)
            except BaseException:
                self._abort()
                raise

    async def close(self) -> None:
        async with self._lock:
            if self._writer is not None:
                try:
                    self._writer.write(_message(b"X", b""))
                    self._writer.close()
                    await asyncio.wait_for(self._writer.wait_closed(), 1.0)
                except (OSError, asyncio.TimeoutError):
                    pass
            self._reader = self._writer = None

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        if self._writer is None:
            await self._connect()
        assert self._writer is not None
        self._writer.write(_message(b"Q", _cstring(sql)))
        await self._writer.drain()
        columns: list[tuple[str, int]] = []
        rows: list[dict[str, Any]] = []
        error: str | None = None
        while True:
            kind, payload = await self._read()
            if kind == b"T":
                columns = parse_row_description(payload)
            elif kind == b"D":
                values = parse_data_row(payload)
                rows.append({name: _convert(value, oid)
                             for (name, oid), value in zip(columns, values)})
            elif kind == b"E":
                error = _error_text(payload)
            elif kind == b"Z":
                if error:
                    raise AdminConsoleError(error)
                return rows
            # C (command complete), N (notice), S (parameter status): nothing to keep

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(*self._address)
        startup = struct.pack("!i", PROTOCOL_VERSION) + b"".join(
            _cstring(s) for s in ("user", self._user, "database", self._database,
                                  "application_name", "devicestream-stats")
        ) + b"\0"
        self._writer.write(struct.pack("!i", len(startup) + 4) + startup)
        await self._authenticate()
        while True:  # parameter status and backend key data until ready for query
            kind, payload = await self._read()
            if kind == b"E":
                raise AdminConsoleError(_error_text(payload))
            if kind == b"Z":
                return

    async def _authenticate(self) -> None:
        assert self._writer is not None
        scram: ScramClient | None = None
        server_signature = b""
        while True:
            kind, payload = await self._read()
            if kind == b"E":
                raise AdminConsoleError(_error_text(payload))
            if kind != b"R":
                raise AdminConsoleError(f"unexpected message {kind!r} during authentication")
            (code,) = struct.unpack_from("!i", payload, 0)
            if code == 0:  # AuthenticationOk
                return
            if code == 3:  # cleartext password
                self._writer.write(_message(b"p", _cstring(self._password)))
            elif code == 5:  # MD5: md5(md5(password + user) + salt)
                inner = hashlib.md5((self._password + self._user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                self._writer.write(_message(b"p", _cstring("md5" + outer)))
            elif code == 10:  # SASL: list of mechanisms
                mechanisms = payload[4:].split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise AdminConsoleError(f"no supported SASL mechanism in {mechanisms!r}")
                scram = ScramClient.new(self._password)
                first = scram.first_message
                self._writer.write(_message(
                    b"p", _cstring("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first
                ))
            elif code == 11 and scram is not None:  # SASL continue: server-first message
                final, server_signature = scram.final_message(payload[4:].decode())
                self._writer.write(_message(b"p", final))
            elif code == 12:  # SASL final: check the server knew the password too
                fields = dict(p.split("=", 1) for p in payload[4:].decode().split(","))
                if base64.b64decode(fields.get("v", "")) != server_signature:
                    raise AdminConsoleError("SCRAM: wrong server signature")
            else:
                raise AdminConsoleError(f"unsupported authentication request {code}")
            await self._writer.drain()

    async def _read(self) -> tuple[bytes, bytes]:
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(5)
            kind, (length,) = header[:1], struct.unpack("!i", header[1:])
            return kind, await self._reader.readexactly(length - 4)
        except asyncio.IncompleteReadError as exc:
            raise AdminConsoleError("the admin console closed the connection") from exc

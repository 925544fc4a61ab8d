"""The admin-console client: SCRAM maths, message parsing and a conversation with a fake
console on a loopback socket."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import pytest

from web.pgbouncer_admin import (
    AdminConsole,
    AdminConsoleError,
    ScramClient,
    parse_data_row,
    parse_row_description,
)


def test_scram_sha_256_matches_the_rfc_7677_example() -> None:
    client = ScramClient(password="pencil", nonce="rOprNGfwEbeRWgbNEkqO", user="user")
    assert client.first_message == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final, server_signature = client.final_message(
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_refuses_a_server_nonce_that_is_not_ours() -> None:
    client = ScramClient(password="pencil", nonce="abc")
    with pytest.raises(AdminConsoleError):
        client.final_message("r=xyz123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _row_description(columns: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!h", len(columns))
    for name, oid in columns:
        body += name.encode() + b"\0" + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0)
    return _message(b"T", body)


def _data_row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return _message(b"D", body)


def test_row_description_and_data_row_parsing() -> None:
    columns = [("database", 25), ("cl_active", 20), ("avg_wait", 1700)]
    assert parse_row_description(_row_description(columns)[5:]) == columns
    assert parse_data_row(_data_row([b"db", None, b"12"])[5:]) == [b"db", None, b"12"]


class FakeConsole:
    """Speaks just enough of the protocol: MD5 authentication and two SHOW commands."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.queries: list[str] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        (length,) = struct.unpack("!i", await reader.readexactly(4))
        startup = await reader.readexactly(length - 4)
        fields = startup[4:].split(b"\0")
        user = fields[fields.index(b"user") + 1].decode()
        assert fields[fields.index(b"database") + 1] == b"pgbouncer"
        salt = b"salt"
        writer.write(_message(b"R", struct.pack("!i", 5) + salt))
        kind, payload = await self._read(reader)
        inner = hashlib.md5((self.password + user).encode()).hexdigest()
        expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
        if payload.rstrip(b"\0").decode() != expected:
            writer.write(_message(b"E", b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"))
            await writer.drain()
            writer.close()
            return
        writer.write(_message(b"R", struct.pack("!i", 0)))
        writer.write(_message(b"S", b"server_version\x001.18.0\0"))
        writer.write(_message(b"Z", b"I"))
        while True:
            try:
                kind, payload = await self._read(reader)
            except asyncio.IncompleteReadError:
                return
            if kind == b"X":
                writer.close()
                return
            query = payload.rstrip(b"\0").decode()
            self.queries.append(query)
            if query == "SHOW POOLS":
                writer.write(_row_description([("database", 25), ("cl_active", 20),
                                               ("maxwait_us", 20), ("pool_mode", 25)]))
                writer.write(_data_row([b"devicestream", b"3", b"1500", b"transaction"]))
                writer.write(_data_row([b"pgbouncer", b"1", b"0", None]))
                writer.write(_message(b"C", b"SHOW\0"))
            else:
                writer.write(_message(b"E", b"SERROR\0C08P01\0Minvalid command\0\0"))
            writer.write(_message(b"Z", b"I"))
            await writer.drain()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        kind = await reader.readexactly(1)
        (length,) = struct.unpack("!i", await reader.readexactly(4))
        return kind, await reader.readexactly(length - 4)


async def test_a_conversation_with_the_admin_console() -> None:
    console = FakeConsole(password="secret")
    server = await asyncio.start_server(console.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AdminConsole("127.0.0.1", port, "devicestream", "secret", timeout=5)
    try:
        rows = await client.query("SHOW POOLS")
        assert rows == [
            {"database": "devicestream", "cl_active": 3, "maxwait_us": 1500,
             "pool_mode": "transaction"},
            {"database": "pgbouncer", "cl_active": 1, "maxwait_us": 0, "pool_mode": None},
        ]
        with pytest.raises(AdminConsoleError, match="invalid command"):
            await client.query("SHOW NONSENSE")
        assert (await client.query("SHOW POOLS"))[0]["cl_active"] == 3
        assert console.queries == ["SHOW POOLS", "SHOW NONSENSE", "SHOW POOLS"]

        wrong = AdminConsole("127.0.0.1", port, "devicestream", "guess", timeout=5)
        with pytest.raises(AdminConsoleError, match="password authentication failed"):
            await wrong.query("SHOW POOLS")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()

"""PostgreSQL wire format: the length-prefixed value lists of DataRow messages and of
binary COPY tuples (both: int32 length, -1 for NULL, then that many bytes), and the rows
of a binary ``COPY ... TO STDOUT``."""
from __future__ import annotations

import struct
from typing import Any

import asyncpg

from sinks.copy_binary import SIGNATURE

_INT16 = struct.Struct(">h").unpack_from
_INT32 = struct.Struct(">i").unpack_from


def read_values(data: bytes, position: int, count: int) -> tuple[list[bytes | None], int]:
    """``count`` values starting at ``position`` (NULL as None), and the position after them."""
    values: list[bytes | None] = []
    for _ in range(count):
        (length,) = _INT32(data, position)
        position += 4
        if length < 0:
            values.append(None)
        else:
            values.append(data[position:position + length])
            position += length
    return values, position


async def copy_rows(conn: asyncpg.Connection, query: str) -> list[tuple[Any, ...]]:
    """The rows of ``COPY (query) TO STDOUT (FORMAT binary)``: each column as bytes (its
    type's binary send format: UTF-8 for text), NULL as None."""
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(query, output=collect, format="binary")
    data = b"".join(chunks)
    if not data.startswith(SIGNATURE):
        raise ValueError("not a binary COPY stream")
    pos = len(SIGNATURE) + 4  # flags
    pos += 4 + _INT32(data, pos)[0]  # header extension
    rows: list[tuple[Any, ...]] = []
    while True:
        fields = _INT16(data, pos)[0]
        pos += 2
        if fields == -1:
            return rows
        row, pos = read_values(data, pos, fields)
        rows.append(tuple(row))

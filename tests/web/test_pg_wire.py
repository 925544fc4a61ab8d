"""Length-prefixed value lists of the PostgreSQL wire format."""
from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from web.pg_wire import copy_rows, read_values


def test_values_nulls_and_empty_strings_are_read_and_the_end_position_returned() -> None:
    data = b"xx" + struct.pack(">i", 3) + b"abc" + struct.pack(">i", -1) + struct.pack(">i", 0) + b"!"
    values, end = read_values(data, 2, 3)
    assert values == [b"abc", None, b""]
    assert data[end:] == b"!"


class _CopyConnection:
    def __init__(self, stream: bytes) -> None:
        self.stream = stream

    async def copy_from_query(self, query: str, output: Any, format: str) -> None:
        assert format == "binary"
        for i in range(0, len(self.stream), 7):  # in pieces, as the server sends them
            await output(self.stream[i:i + 7])


def test_binary_copy_rows_are_parsed_with_nulls() -> None:
    def row(*fields: bytes | None) -> bytes:
        out = struct.pack(">h", len(fields))
        for field in fields:
            out += struct.pack(">i", -1) if field is None else struct.pack(">i", len(field)) + field
        return out

    stream = (b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0) + row(b"temp", b"\x01\x02")
              + row("é".encode(), None) + struct.pack(">h", -1))
    rows = asyncio.run(copy_rows(_CopyConnection(stream), "SELECT 1"))
    assert rows == [(b"temp", b"\x01\x02"), ("é".encode(), None)]
    with pytest.raises(ValueError):
        asyncio.run(copy_rows(_CopyConnection(b"x\ty\n"), "SELECT 1"))

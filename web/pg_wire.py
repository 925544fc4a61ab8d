"""PostgreSQL wire format: the length-prefixed value lists of DataRow messages and of
binary COPY tuples (both: int32 length, -1 for NULL, then that many bytes)."""
from __future__ import annotations

import struct

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

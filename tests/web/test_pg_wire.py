"""Length-prefixed value lists of the PostgreSQL wire format."""
from __future__ import annotations

import struct

from web.pg_wire import read_values


def test_values_nulls_and_empty_strings_are_read_and_the_end_position_returned() -> None:
    data = b"xx" + struct.pack(">i", 3) + b"abc" + struct.pack(">i", -1) + struct.pack(">i", 0) + b"!"
    values, end = read_values(data, 2, 3)
    assert values == [b"abc", None, b""]
    assert data[end:] == b"!"

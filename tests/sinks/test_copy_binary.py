"""The binary COPY stream, read back with struct as PostgreSQL's COPY FROM would."""
from __future__ import annotations

import struct
from datetime import datetime, timezone

import numpy as np
import pytest

from sinks.copy_binary import (
    FLOAT8, INT4, INT8, PG_EPOCH_US, SIGNATURE, copy_rows, timestamptz,
)


def _read(stream: bytes) -> list[tuple[bytes, ...]]:
    assert stream[:11] == SIGNATURE
    flags, extension = struct.unpack(">ii", stream[11:19])
    assert (flags, extension) == (0, 0)
    rows, at = [], 19
    while True:
        (count,) = struct.unpack(">h", stream[at:at + 2])
        at += 2
        if count == -1:
            break
        fields = []
        for _ in range(count):
            (size,) = struct.unpack(">i", stream[at:at + 4])
            fields.append(stream[at + 4:at + 4 + size])
            at += 4 + size
        rows.append(tuple(fields))
    assert at == len(stream), "bytes after the trailer"
    return rows


def test_rows_hold_each_column_in_its_binary_format() -> None:
    stream = copy_rows(np.array([1, -2], INT8), np.array([7, 2**31 - 1], INT4),
                       np.array([0.5, -1e300], FLOAT8))
    assert isinstance(stream, bytearray)  # asyncpg would take bytes for a path
    assert _read(bytes(stream)) == [
        (struct.pack(">q", 1), struct.pack(">i", 7), struct.pack(">d", 0.5)),
        (struct.pack(">q", -2), struct.pack(">i", 2**31 - 1), struct.pack(">d", -1e300)),
    ]


def test_timestamptz_counts_microseconds_from_2000() -> None:
    moment = datetime(2026, 12, 5, 4, 30, 0, 123456, tzinfo=timezone.utc)
    unix_us = int(moment.timestamp()) * 1_000_000 + moment.microsecond
    (field,) = _read(bytes(copy_rows(timestamptz(np.array([unix_us, PG_EPOCH_US])))))[0]
    assert struct.unpack(">q", field)[0] == unix_us - PG_EPOCH_US
    assert _read(bytes(copy_rows(timestamptz(np.array([PG_EPOCH_US])))))[0] == (bytes(8),)


def test_no_rows_is_a_header_and_a_trailer() -> None:
    assert _read(bytes(copy_rows(np.array([], INT4)))) == []


def test_native_byte_order_is_refused() -> None:
    with pytest.raises(ValueError, match="big-endian"):
        copy_rows(np.array([1], np.int64))
    with pytest.raises(ValueError, match="at least one column"):
        copy_rows()

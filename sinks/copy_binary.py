"""PostgreSQL's binary COPY format, built from numpy columns in one pass.

asyncpg's ``copy_records_to_table`` looks the table's columns up and then encodes each value
of each Python record in turn; a batch of points already held as numpy columns becomes one
buffer here instead (docs/performance.md#sink-alone). ``sinks.cold_archive`` reads
COPY output with the same row layout (``row_dtype``).
"""
from __future__ import annotations

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + bytes(8)  # no flags, then the header extension's length: none
TRAILER = b"\xff\xff"  # a field count of -1

# timestamptz's binary format counts microseconds from 2000-01-01 UTC.
PG_EPOCH_US = 946_684_800_000_000

TIMESTAMPTZ = np.dtype(">i8")
INT4 = np.dtype(">i4")
INT8 = np.dtype(">i8")
FLOAT8 = np.dtype(">f8")


def timestamptz(time_us: np.ndarray) -> np.ndarray:
    """Microseconds since the Unix epoch as timestamptz's binary values."""
    return (time_us - PG_EPOCH_US).astype(TIMESTAMPTZ)


def row_dtype(columns: dict[str, np.dtype]) -> np.dtype:
    """One binary COPY row of these fixed-width, NOT NULL columns: ``count`` (the field
    count), then per column ``<name>_size`` and ``<name>``."""
    fields: list[tuple[str, np.dtype]] = [("count", np.dtype(">i2"))]
    for name, dtype in columns.items():
        fields += [(f"{name}_size", np.dtype(">i4")), (name, dtype)]
    return np.dtype(fields)


def copy_rows(*columns: np.ndarray) -> bytearray:
    """The binary COPY stream of the rows whose n-th field is ``columns[n][row]``.

    Each column's dtype must be its PostgreSQL type's binary format (big-endian, fixed
    size: ``INT4``, ``INT8``, ``FLOAT8``, ``TIMESTAMPTZ``); no value may be NULL. A
    bytearray, not bytes: asyncpg's ``copy_to_table`` would take bytes for a file's path.
    """
    if not columns:
        raise ValueError("a row needs at least one column")
    for n, column in enumerate(columns):
        if column.dtype.byteorder not in (">", "|") and column.dtype.itemsize > 1:
            raise ValueError(f"column {n} is {column.dtype}, not big-endian")
    rows = np.empty(len(columns[0]), row_dtype({f"c{n}": c.dtype for n, c in enumerate(columns)}))
    rows["count"] = len(columns)
    for n, column in enumerate(columns):
        rows[f"c{n}_size"] = column.dtype.itemsize
        rows[f"c{n}"] = column
    stream = bytearray(HEADER)
    stream += rows.data
    stream += TRAILER
    return stream

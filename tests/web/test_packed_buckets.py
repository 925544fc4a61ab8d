"""Unpacking the aggregate routes' packed buckets (no network)."""
from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta, timezone

import orjson

from web.packed_buckets import unpack_buckets
from web.queries import encode

NOW = datetime(2026, 11, 28, 17, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def _packed(rows: list[tuple[int, int, float, float, float]]) -> bytes:
    """AGGREGATES_COPY's packed column: (us since 2000, count, sum, min, max) big-endian."""
    return b"".join(struct.pack(">qqddd", *row) for row in rows)


def _us_2000(moment: datetime) -> int:
    return int((moment - datetime(2000, 1, 1, tzinfo=timezone.utc)).total_seconds()) * 10**6


def test_packed_buckets_unpack_exactly_in_order_and_to_the_limit() -> None:
    hours = [_us_2000(NOW + i * HOUR) for i in range(4)]
    rows = [(hours[i], i + 1, 0.1 * i, -0.0 if i == 0 else -1e300, 1e-300 * i) for i in range(4)]
    texts = ["2026-11-28T17:00:00Z", "2026-11-28T18:00:00Z", "2026-11-28T19:00:00Z",
             "2026-11-28T20:00:00Z"]
    want = {"bucket": texts, "count": [1, 2, 3, 4], "sum": [r[2] for r in rows],
            "min": [r[3] for r in rows], "max": [r[4] for r in rows]}

    for packed in (_packed(rows), _packed(rows[2:] + rows[:2])):  # in order, or not
        buckets, counts, sums, lows, highs, truncated = unpack_buckets(packed, 10)
        got = {"bucket": buckets, "count": counts, "sum": sums, "min": lows, "max": highs}
        assert not truncated
        assert orjson.loads(encode(got)) == want
        assert encode(got) == encode(want)  # the cached bucket text is the same JSON
        assert math.copysign(1, lows[0]) == -1  # -0.0 kept (the exact bits)

    *columns, truncated = unpack_buckets(_packed(rows), 3)
    assert truncated and orjson.loads(encode(columns[0])) == texts[:3]
    assert columns[1:] == [want[k][:3] for k in ("count", "sum", "min", "max")]

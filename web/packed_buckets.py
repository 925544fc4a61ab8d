"""The packed aggregate buckets of the aggregate routes (``AGGREGATES_COPY`` in
``web.queries``): 40 bytes a bucket, the binary send format (big-endian, exact bits) of
bucket (microseconds since 2000-01-01), count, sum, min and max, unpacked into columns
with a few C calls; the buckets' RFC 3339 texts come from caches.
"""
from __future__ import annotations

import array
import sys
import time
from typing import Any

import orjson

from sinks.copy_binary import PG_EPOCH_US

_SWAP = sys.byteorder == "little"  # the packed values are big-endian (network order)
assert array.array("q").itemsize == array.array("d").itemsize == 8
_FIELDS = 5  # bucket, count, sum, min, max: 8 bytes each
_PG_EPOCH = PG_EPOCH_US // 1_000_000  # in Unix seconds: timestamptz_send counts from there


def unpack_buckets(packed: bytes, limit: int) -> tuple[Any, list[int], list[float],
                                                        list[float], list[float], bool]:
    """The columns of one metric from AGGREGATES_COPY's ``packed``, its first ``limit``
    buckets in bucket order: (bucket texts, counts, sums, mins, maxs, truncated).

    The bucket column comes as one pre-encoded JSON fragment from a cache keyed by the
    packed bucket values: every metric of every device with the same buckets shares it.
    """
    values = array.array("q")
    values.frombytes(packed)
    if _SWAP:
        values.byteswap()  # per 8 bytes: right for the doubles too
    truncated = len(values) > limit * _FIELDS
    ints = memoryview(values)[:limit * _FIELDS]
    floats = ints.cast("B").cast("d")
    stamps = ints[0::_FIELDS]
    # (memoryview.tolist gives ints or floats by the view's format)
    rest: list[list[Any]] = [ints[1::_FIELDS].tolist(), floats[2::_FIELDS].tolist(),
                             floats[3::_FIELDS].tolist(), floats[4::_FIELDS].tolist()]
    key = stamps.tobytes()
    buckets = _BUCKET_JSON.get(key)
    if buckets is None:
        us = stamps.tolist()
        if us != sorted(us):  # never seen; linear for sorted input, keys are unique
            us, *rest = in_bucket_order([us, *rest])
            counts, sums, mins, maxs = rest
            return (_bucket_texts(us), counts, sums, mins, maxs, truncated)
        buckets = _bucket_json(key, us)
    counts, sums, mins, maxs = rest
    return (buckets, counts, sums, mins, maxs, truncated)


_BUCKET_TEXT: dict[int, str] = {}
_BUCKET_TEXT_MAX = 200_000  # ~140 days of minutes; the cache starts over beyond
_BUCKET_JSON: dict[bytes, orjson.Fragment] = {}
_BUCKET_JSON_MAX_BYTES = 16 << 20  # encoded text; the cache starts over beyond
_bucket_json_bytes = 0


def _bucket_texts(stamps: list[int]) -> list[str]:
    """Bucket starts (whole seconds, as microseconds since 2000-01-01) as RFC 3339 UTC
    text, from a cache."""
    try:
        return list(map(_BUCKET_TEXT.__getitem__, stamps))  # the usual case, at C speed
    except KeyError:
        if len(_BUCKET_TEXT) + len(stamps) > _BUCKET_TEXT_MAX:
            _BUCKET_TEXT.clear()
        for us in stamps:
            if us not in _BUCKET_TEXT:
                _BUCKET_TEXT[us] = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(us // 1_000_000 + _PG_EPOCH))
        return list(map(_BUCKET_TEXT.__getitem__, stamps))


def _bucket_json(key: bytes, stamps: list[int]) -> orjson.Fragment:
    """The JSON array of the bucket texts of ``stamps`` (in order), cached under ``key``."""
    global _bucket_json_bytes
    text = orjson.dumps(_bucket_texts(stamps))
    if _bucket_json_bytes + len(text) > _BUCKET_JSON_MAX_BYTES:
        _BUCKET_JSON.clear()
        _bucket_json_bytes = 0
    fragment = _BUCKET_JSON[key] = orjson.Fragment(text)
    _bucket_json_bytes += len(text)
    return fragment


def in_bucket_order(columns: list[list[Any]]) -> list[list[Any]]:
    """The columns of one metric, sorted by their first (time) column if they are not."""
    times = columns[0]
    if times == sorted(times):  # linear for sorted input; keys are unique
        return columns
    order = sorted(range(len(times)), key=times.__getitem__)
    return [[column[i] for i in order] for column in columns]

"""Duplicate keys in a message's raw JSON, which orjson does not report.

A reading holding a duplicate key, at any depth, is invalid (:mod:`schema.validation`); the
reason names the key and its path: ``duplicate key 'x'``, ``metrics: duplicate key 'x'``.

orjson silently keeps the last value of a duplicated key. Re-parsing every message with the
stdlib json + object_pairs_hook would find them, but costs several times orjson's own decode
(docs/performance.md#validation).

Instead, when the value holds no backslash (so every character of every string is written
literally), count colons. In the bytes, each colon is either a key/value separator (exactly
one per key written) or inside a string. From the decoded document we know the keys orjson
kept and every colon inside strings. So::

    value.count(b":") == keys kept + colons inside decoded strings

holds exactly when no key was dropped, i.e. when there is no duplicate (UTF-8 multi-byte
sequences never contain the byte 0x3A). For a valid reading the right side is known from
validation: 3 keys + len(metrics) + colons in the time string + colons in metric names (the
names' colons are counted only if the first comparison fails: they are rare). Invalid
elements (rare) are walked generically (:func:`key_tally`). The whole check
(:func:`maybe_duplicates`) costs a C-level count over the bytes plus a few additions per
reading. A mismatch, or any backslash (an escape such as ``\\u003a`` could hide a colon),
sends the message to an exact but much slower scanner (:func:`scan_duplicates`) that also
tells which array element holds the duplicate. Valid readings never need a backslash,
so only odd messages pay for it.

The scanner's tokenizer also finds the byte spans of a top-level array's elements
(:func:`element_spans`), for elements too deep for orjson to re-serialize.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from schema.error_text import show

__all__ = ["DuplicateKey", "element_spans", "key_tally", "maybe_duplicates", "scan_duplicates"]


class _HasMetrics(Protocol):
    @property
    def metrics(self) -> Mapping[str, float]: ...


def key_tally(obj: object) -> int:
    """Keys + colons inside strings of a decoded JSON value (iterative: no recursion limit)."""
    n = 0
    stack = [obj]
    pop = stack.pop
    push = stack.extend
    while stack:
        o = pop()
        if type(o) is dict:
            n += len(o) + "".join(o).count(":")
            push(o.values())
        elif type(o) is list:
            push(o)
        elif type(o) is str:
            n += o.count(":")
    return n


def maybe_duplicates(value: bytes, tally: int, readings: Sequence[_HasMetrics]) -> bool:
    """False when the message certainly has no duplicate key (see the module docstring).

    tally: keys + colons in strings of the decoded message, except the colons in the metric
    names of ``readings`` (its valid readings), which are counted only when needed.
    """
    if b"\\" in value:
        return True
    extra = value.count(b":") - tally
    if extra == 0:
        return False
    return extra != sum("".join(r.metrics).count(":") for r in readings)


_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:("[^"\\]*(?:\\.[^"\\]*)*")|([\[\]{},:])|([^ \t\r\n\[\]{},:"]+))', re.S
)


@dataclass(slots=True)
class DuplicateKey:
    """The first duplicate key of a reading: the reason, and the byte span of the array
    element holding it (the whole message when the message is one object)."""

    error: str
    start: int
    end: int


@dataclass(slots=True)
class _Frame:
    """An open object or array of the scan."""

    keys: set[str] | None  # the keys seen so far in an object; None for an array
    last_key: str | None  # the object's latest key
    name: str  # this value's name in the reading's path ("metrics", "[]", ...)


def scan_duplicates(value: bytes) -> dict[int | None, DuplicateKey]:
    """Exact duplicate-key scan of a document orjson accepted.

    Returns {element index (None when the document is an object): its first duplicate key,
    with the byte span of the array element holding it}. Iterative, so any nesting depth
    orjson accepts is fine.
    """
    found: dict[int | None, DuplicateKey] = {}
    top_array = value.lstrip(b" \t\r\n")[:1] == b"["
    reading_depth = 2 if top_array else 1
    frames: list[_Frame] = []
    expect_key = False
    index = -1
    start = 0
    for m in _TOKEN.finditer(value):
        string, punct, _ = m.groups()
        if top_array and len(frames) == 1 and punct not in (b",", b"]", b":"):
            index += 1
            start = m.start(m.lastindex or 0)
        if punct is None:
            if string is not None and expect_key:
                frame = frames[-1]
                keys = frame.keys
                assert keys is not None  # expect_key is set only inside an object
                key = orjson.loads(string)
                if key in keys:
                    owner = index if top_array else None
                    if owner not in found:
                        path = ".".join(f.name for f in frames[reading_depth:])
                        error = f"duplicate key {show(key)}"
                        found[owner] = DuplicateKey(
                            f"{path}: {error}" if path else error,
                            start if top_array else 0,
                            len(value),
                        )
                keys.add(key)
                frame.last_key = key
                expect_key = False
        elif punct == b"{" or punct == b"[":
            parent = frames[-1] if frames else None
            if parent is None:
                name = ""
            elif parent.keys is None:
                name = "[]"
            else:
                name = str(parent.last_key)
            frames.append(_Frame(set() if punct == b"{" else None, None, name))
            expect_key = punct == b"{"
        elif punct == b"}" or punct == b"]":
            if frames:
                frames.pop()
            if top_array and len(frames) == 1 and index in found:
                found[index].end = m.end()
            expect_key = False
        elif punct == b",":
            expect_key = bool(frames) and frames[-1].keys is not None
        else:  # ":"
            expect_key = False
    return found


def element_spans(value: bytes) -> list[tuple[int, int]]:
    """Byte spans of the elements of a top-level JSON array that orjson accepted."""
    spans: list[tuple[int, int]] = []
    depth = 0
    start = 0
    for m in _TOKEN.finditer(value):
        punct = m.group(2)
        if depth == 1 and punct != b"," and punct != b"]":
            start = m.start(m.lastindex or 0)
            if punct is None:  # a string, number or literal element
                spans.append((start, m.end()))
                continue
        if punct == b"{" or punct == b"[":
            depth += 1
        elif punct == b"}" or punct == b"]":
            depth -= 1
            if depth == 1:
                spans.append((start, m.end()))
    return spans

"""How offending values are written in the reasons of invalid readings.

A reason names the field and shows the value it refused, briefly and safely: a short repr
(at most 80 characters, containers cut after 4 items and 2 levels), ``null``/``true``/
``false`` spelled as in JSON, and the value's JSON type where that helps. None of these
raises, whatever the value.
"""

from __future__ import annotations

import reprlib

__all__ = ["JSON_TYPE_NAMES", "got", "json_error", "json_type", "show", "typed"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlong = 40
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 4

JSON_TYPE_NAMES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

_JSON_SCALARS: dict[object, str] = {None: "null", True: "true", False: "false"}


def show(value: object) -> str:
    """A short, safe repr of an offending value (never raises, never huge)."""
    try:
        text = _repr.repr(value)
    except Exception:  # e.g. an int over the int->str digit limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def json_type(value: object) -> str:
    """The JSON type of a decoded value ("object", "array", ...), else the Python type's name."""
    return JSON_TYPE_NAMES.get(type(value)) or type(value).__name__


def typed(value: object) -> str:
    """'null', 'true', 'false', or the JSON type and a short repr: "array [1, 2]"."""
    if value is None or type(value) is bool:
        return _JSON_SCALARS[value]
    return f"{json_type(value)} {show(value)}"


def got(value: object) -> str:
    """The offending value: JSON spelling for null/booleans, a short repr otherwise."""
    if value is None or type(value) is bool:
        return _JSON_SCALARS[value]
    return show(value)


def json_error(value: bytes, exc: Exception) -> str:
    """The reason a message orjson refused is invalid: bad UTF-8 (with the first bad byte's
    offset) or invalid JSON (orjson's text, cut to 160 characters)."""
    text = str(exc)
    if "UTF-8" in text and "BOM" not in text and "byte order mark" not in text:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as ude:
            bad = show(value[ude.start : ude.start + 4])
            return f"message is not valid UTF-8 (byte {ude.start}: {bad})"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"invalid JSON: {text}"

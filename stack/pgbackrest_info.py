"""Reads ``pgbackrest info --output=json`` (on stdin) for stack/backup.sh and stack/restore.sh.

    pgbackrest_info.py last              the newest backup: label, type, sizes, seconds
    pgbackrest_info.py keep FULL DAYS    how many full backups retention keeps
    pgbackrest_info.py full-due HOURS    "due" when no full backup ended in the last HOURS
    pgbackrest_info.py record            SQL that records the newest backup in
                                         storage.backups (the worker's backup age)
    pgbackrest_info.py pick TIME         the backup a restore to TIME starts from, and TIME
                                         as PostgreSQL's recovery_target_time

Retention keeps the newest FULL full backups, and more when needed so that point-in-time
recovery reaches DAYS back: every full backup that started within the last DAYS days, plus
the newest one older than that (the base for the window's start). DAYS = 0 keeps by count
only. pgBackRest removes the WAL older than the oldest backup kept.

A bad argument or an answer that cannot be used exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any


class InfoError(Exception):
    """The repository cannot answer the question (no backup, TIME out of range...)."""


def _stanza(info: Any) -> dict[str, Any]:
    if not isinstance(info, list) or len(info) != 1 or not isinstance(info[0], dict):
        raise InfoError("pgbackrest info did not describe exactly one stanza")
    return info[0]


def backups(info: Any) -> list[dict[str, Any]]:
    """The stanza's backups, oldest first."""
    found = _stanza(info).get("backup") or []
    return sorted(found, key=lambda b: b["timestamp"]["stop"])


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def last(info: Any) -> str:
    """One line per field of the newest backup, as make backup prints them."""
    done = backups(info)
    if not done:
        raise InfoError("the repository holds no backup")
    newest = done[-1]
    seconds = newest["timestamp"]["stop"] - newest["timestamp"]["start"]
    return "\n".join([
        f"label      {newest['label']}",
        f"type       {newest['type']}",
        f"database   {_mb(newest['info']['size'])}",
        f"stored     {_mb(newest['info']['repository']['delta'])} "
        f"(compressed; {_mb(newest['info']['delta'])} of the database copied)",
        f"seconds    {seconds}",
        f"ended      {_utc(newest['timestamp']['stop'])}",
        f"backups    {len(done)} in the repository "
        f"({sum(b['type'] == 'full' for b in done)} full)",
    ])


# pgBackRest's labels: 20261204-101500F, 20261204-101500F_20261205-101500I (or D)
_LABEL = re.compile(r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?")


def record(info: Any) -> str:
    """An idempotent INSERT of the newest backup into storage.backups (migration 0007)."""
    done = backups(info)
    if not done:
        raise InfoError("the repository holds no backup")
    newest = done[-1]
    label, type_ = newest["label"], newest["type"]
    if not _LABEL.fullmatch(label) or type_ not in ("full", "diff", "incr"):
        raise InfoError(f"unexpected backup label or type: {label!r} {type_!r}")
    values = ", ".join([
        f"'{label}'", f"'{type_}'",
        f"to_timestamp({int(newest['timestamp']['start'])})",
        f"to_timestamp({int(newest['timestamp']['stop'])})",
        str(int(newest["info"]["size"])), str(int(newest["info"]["repository"]["delta"])),
    ])
    return ("INSERT INTO storage.backups (label, type, started_at, finished_at, "
            f"database_bytes, stored_bytes) VALUES ({values}) ON CONFLICT (label) DO NOTHING;")


def keep(info: Any, full: int, days: int, now: float) -> int:
    """The number of full backups retention keeps (see the module's docstring)."""
    fulls = [b for b in backups(info) if b["type"] == "full"]
    if days == 0:
        return full
    window_start = now - days * 86400
    inside = sum(b["timestamp"]["start"] >= window_start for b in fulls)
    base = 1 if inside < len(fulls) else 0
    return max(full, inside + base)


def full_due(info: Any, hours: float, now: float) -> bool:
    """Whether the newest full backup ended more than ``hours`` ago (or there is none)."""
    ends = [b["timestamp"]["stop"] for b in backups(info) if b["type"] == "full"]
    return not ends or now - max(ends) >= hours * 3600


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with an explicit offset."""
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise InfoError(f"TIME must be an RFC 3339 time such as 2026-12-04T10:00:00Z, got {text!r}")
    if "T" not in text.upper() or parsed.tzinfo is None:
        raise InfoError(
            f"TIME must be an RFC 3339 time with a date, 'T' and an offset (Z or +hh:mm), got {text!r}")
    return parsed


def pick(info: Any, target: float, now: float) -> str:
    """The label of the newest backup that ended at or before ``target``.

    A backup is consistent only from its end on: one still running at TIME cannot be the
    base of a restore to TIME.
    """
    if target > now:
        raise InfoError(f"TIME {_utc(target)} is in the future")
    done = backups(info)
    if not done:
        raise InfoError("the repository holds no backup: run make backup first")
    usable = [b for b in done if b["timestamp"]["stop"] <= target]
    if not usable:
        first = done[0]
        raise InfoError(
            f"TIME {_utc(target)} is before the end of the oldest backup "
            f"({first['label']}, ended {_utc(first['timestamp']['stop'])}): "
            "the repository cannot restore to it")
    return usable[-1]["label"]


def main(argv: list[str]) -> int:
    command, *args = argv or [""]
    arity = {"last": 0, "record": 0, "keep": 2, "full-due": 1, "pick": 1}
    if arity.get(command) != len(args):
        print("usage: pgbackrest_info.py last | record | keep FULL DAYS | full-due HOURS"
              " | pick TIME",
              file=sys.stderr)
        return 2
    try:
        info = json.load(sys.stdin)
        if command == "last":
            print(last(info))
        elif command == "record":
            print(record(info))
        elif command == "keep":
            print(keep(info, int(args[0]), int(args[1]), time.time()))
        elif command == "full-due":
            print("due" if full_due(info, float(args[0]), time.time()) else "not due")
        else:
            target = parse_time(args[0])
            recovery_time = target.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
            print(pick(info, target.timestamp(), time.time()), recovery_time)
    except (InfoError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""stack/pgbackrest_info.py: what make backup prints and expires, and which backup make
restore starts from, read from pgBackRest's JSON (run as the scripts run it)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.stack import REPO

DAY = 86400
NOW = time.time()


def backup(label: str, kind: str, start: float, stop: float) -> dict[str, Any]:
    return {"label": label, "type": kind, "timestamp": {"start": int(start), "stop": int(stop)},
            "info": {"size": 5_000_000, "delta": 4_000_000,
                     "repository": {"size": 1_000_000, "delta": 900_000}}}


def info(*backups: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "devicestream", "backup": list(backups), "archive": []}]


def run(document: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "stack" / "pgbackrest_info.py"), *args],
                          input=json.dumps(document), capture_output=True, text=True, timeout=30)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


# a full backup every day at one hour before now's time of day, for 21 days
DAILY = info(*(backup(f"F{d}", "full", NOW - d * DAY - 3600, NOW - d * DAY - 3540)
               for d in range(20, -1, -1)))


@pytest.mark.parametrize("full, days, kept", [
    (7, 14, 15),   # the 14 fulls of the last 14 days, and the one before them as the base
    (20, 14, 20),  # the count wins when it keeps more
    (3, 0, 3),     # 0 days: by count only
    (30, 14, 30),  # more than there are: pgBackRest keeps them all
])
def test_retention_keeps_the_count_or_the_wal_window_whichever_is_more(full, days, kept) -> None:
    done = run(DAILY, "keep", str(full), str(days))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == kept


def test_retention_without_an_older_full_backup_keeps_what_is_there() -> None:
    young = info(backup("F1", "full", NOW - DAY, NOW - DAY + 60), backup("F0", "full", NOW, NOW))
    assert int(run(young, "keep", "1", "14").stdout) == 2


def test_restore_starts_from_the_newest_backup_that_ended_before_the_time() -> None:
    repo = info(backup("F", "full", NOW - 3000, NOW - 2900),
                backup("F_I", "incr", NOW - 1000, NOW - 900))
    done = run(repo, "pick", iso(NOW - 950))
    assert done.returncode == 0, done.stderr
    label, day, clock = done.stdout.split()
    assert label == "F"  # the incremental had not ended yet
    assert run(repo, "pick", iso(NOW - 800)).stdout.split()[0] == "F_I"
    assert f"{day} {clock}".endswith("+00")


def test_restore_time_keeps_its_microseconds_in_utc() -> None:
    repo = info(backup("F", "full", 0, 60))
    done = run(repo, "pick", "2026-01-02T03:04:05.123456+02:00")
    assert done.stdout.split(None, 1)[1].strip() == "2026-01-02 01:04:05.123456+00"


@pytest.mark.parametrize("moment, reason", [
    (iso(NOW - 4000), "before the end of the oldest backup"),
    (iso(NOW + 3600), "is in the future"),
    ("2026-12-04T10:00:00", "an offset"),
    ("2026-12-04 10:00", "an offset"),
    ("yesterday", "RFC 3339"),
], ids=["before-the-oldest", "future", "offset-missing", "offset-missing-no-t", "words"])
def test_a_time_the_repository_cannot_restore_is_refused(moment, reason) -> None:
    done = run(info(backup("F", "full", NOW - 3000, NOW - 2900)), "pick", moment)
    assert done.returncode == 2 and reason in done.stderr, done.stderr
    assert done.stdout == ""


def test_an_empty_repository_says_so() -> None:
    for args in (("pick", iso(NOW)), ("last",)):
        done = run(info(), *args)
        assert done.returncode == 2 and "no backup" in done.stderr


def test_a_full_backup_is_due_a_day_after_the_last_one() -> None:
    assert run(info(), "full-due", "24").stdout.strip() == "due"
    assert run(info(backup("F", "full", NOW - 25 * 3600, NOW - 25 * 3600 + 60)),
               "full-due", "24").stdout.strip() == "due"
    recent = info(backup("F", "full", NOW - 3600, NOW - 3500),
                  backup("F_I", "incr", NOW - 60, NOW - 30))
    assert run(recent, "full-due", "24").stdout.strip() == "not due"


def test_last_prints_the_newest_backup() -> None:
    done = run(info(backup("F", "full", NOW - 100, NOW - 40)), "last")
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert fields["label"] == "F" and fields["type"] == "full" and fields["seconds"] == "60"
    assert fields["stored"].startswith("0.9 MB")


def test_bad_arguments_get_the_usage() -> None:
    for args in ((), ("keep", "7"), ("pick",), ("restore", "x")):
        done = run(info(), *args)
        assert done.returncode == 2 and "usage:" in done.stderr


def test_record_inserts_the_newest_backup_once_and_refuses_an_unexpected_label() -> None:
    done = run(info(backup("20261203-101500F_20261204-101500I", "incr", 1_700_000_000,
                           1_700_000_060),
                    backup("20261203-101500F", "full", 1_600_000_000, 1_600_000_900)),
               "record")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "INSERT INTO storage.backups (label, type, started_at, finished_at, database_bytes, "
        "stored_bytes) VALUES ('20261203-101500F_20261204-101500I', 'incr', "
        "to_timestamp(1700000000), to_timestamp(1700000060), 5000000, 900000) "
        "ON CONFLICT (label) DO NOTHING;")
    forged = run(info(backup("x'); DROP TABLE storage.series; --", "full", 1, 2)), "record")
    assert forged.returncode == 2 and "unexpected backup label" in forged.stderr

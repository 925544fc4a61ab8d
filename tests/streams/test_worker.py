"""The worker's way out: ending at once without committing anything more."""
from __future__ import annotations

import subprocess
import sys

from tests.stack import REPO


def test_exit_without_committing_logs_why_and_ends_with_the_given_status() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(); "
         "from streams.worker import exit_without_committing as out; "
         "out(70, 'ingest failed (RuntimeError)', RuntimeError('a bug'))"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 70
    assert "ingest failed (RuntimeError); exiting with status 70" in done.stderr
    assert "RuntimeError: a bug" in done.stderr

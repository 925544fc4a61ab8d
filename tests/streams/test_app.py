"""The composition root: ``streams.app`` registers every part on the app, and each part
imports on its own (no import cycle through ``streams.app``)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from streams.app import app

PARTS = ["agents.ingest", "streams.commands", "web.views", "web.ingest",
         "streams.maintenance", "web.queries", "web.health"]


@pytest.mark.parametrize("module", PARTS)
def test_each_part_imports_on_its_own_in_a_new_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_root_registers_the_agent_and_every_route() -> None:
    assert [agent.name for agent in app.agents.values()] == ["ingest"]
    routes = {route.resource.canonical for route in app.web.web_app.router.routes()
              if route.resource is not None}
    assert routes == {
        "/dashboard", "/dashboard/dashboard.js", "/dashboard/data",
        "/devices/{device_id}/aggregates", "/devices/{device_id}/latest",
        "/devices/{device_id}/readings", "/health/live", "/health/ready", "/ingest",
        "/metrics", "/pipeline/db", "/pipeline/lag", "/pipeline/throughput"}

"""The worker's composition root: run ``faust -A streams.app worker -l info`` on every node.

``streams.application`` makes the Faust app; importing the modules below registers the
ingest agent, the commands, the web routes and the timers on it. Only Faust's command line
and the tests import this module.
"""
from __future__ import annotations

# In this order, as routes are matched in the order they were added.
import agents.ingest  # noqa: F401  (the ingest agent)
import streams.commands  # noqa: F401  (migrate, simulate, replay, device-token)
import web.views  # noqa: F401  (the web routes)
import web.ingest  # noqa: F401  (POST /ingest)
import streams.maintenance  # noqa: F401  (the maintenance command and timer)
import web.queries  # noqa: F401  (the /devices/{id}/... routes)
import web.health  # noqa: F401  (/health/* and the stall watchdog)
from streams.application import app, device_topics, pipeline_stats, settings

__all__ = ["app", "device_topics", "pipeline_stats", "settings"]

"""Read access to the worker's web server: with ``READ_TOKEN`` set, every route but the
health checks and ``POST /ingest`` (which has credentials of its own) needs the token.

The check is an aiohttp middleware, given to Faust through its public
``web_application_options`` setting, so it covers every route the worker serves, Faust's
own pages included. The token comes as ``Authorization: Bearer <token>`` or as the
password of HTTP Basic: a browser asks for it once, then sends it with the dashboard's
own data requests.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from web.credentials import REALM, read_allowed

log = logging.getLogger(__name__)

# (method, path) pairs open to anyone; paths match exactly (no prefix to trick)
PUBLIC = frozenset({
    *((method, path) for method in ("GET", "HEAD")
      for path in ("/health/live", "/health/ready")),
    ("POST", "/ingest"),
})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_access(read_token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware that answers 401 to a request without ``read_token``; it lets
    everything through when the token is empty."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (not read_token or (request.method, request.path) in PUBLIC
                or read_allowed(request.headers.get("Authorization"), read_token)):
            return await handler(request)
        log.warning("401 for %s %s: %s", request.method, request.path,
                    "no credentials" if "Authorization" not in request.headers
                    else "wrong read token")
        return web.json_response(
            {"error": "this route needs the read token: Authorization: Bearer <READ_TOKEN>, "
                      "or HTTP Basic with it as the password"},
            status=401,
            headers=CIMultiDict([("WWW-Authenticate", f'Bearer realm="{REALM}"'),
                                 ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')]))

    return middleware


def open_web_warning(web_bind: str, read_token: str) -> str | None:
    """The start-up warning for a web server reachable beyond this host with no read token."""
    if read_token:
        return None
    try:
        loopback = web_bind == "localhost" or ipaddress.ip_address(web_bind).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (f"WEB_BIND={web_bind} and no READ_TOKEN: /devices/*, /dashboard, /pipeline/* and "
            "/metrics answer anyone who reaches port WEB_PORT; set READ_TOKEN")

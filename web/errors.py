"""JSON errors for every route of the worker's web server, never a stack trace: one aiohttp
middleware, given to Faust through its public ``web_application_options`` setting.

A route refuses a request by raising :class:`ClientError` (its status, message and
headers reach the client as ``{"error": message}``). A database that is unreachable or
shedding load answers 503 with ``Retry-After``; anything else is a bug: 500, logged with
its traceback (never the request's headers, which may hold tokens).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, Mapping

from aiohttp import web

from sinks.postgres import is_transient

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClientError(Exception):
    """A request the route cannot answer: 400 by default (404 for what does not exist,
    503 for a query over its time limit)."""

    def __init__(self, message: str, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure of ``handler`` as a JSON answer."""
    try:
        return await handler(request)
    except ClientError as exc:
        return error_response(exc.status, str(exc), exc.headers)
    except web.HTTPException as exc:  # aiohttp's own: no such route, method not allowed
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason, {
            k: v for k, v in exc.headers.items() if k.lower() != "content-type"})
    except Exception as exc:  # noqa: BLE001 -- the client gets JSON, never a trace
        if is_transient(exc):
            log.warning("%s %s: database unavailable (%s: %s)", request.method, request.path,
                        type(exc).__name__, exc)
            return error_response(503, f"database unavailable: {type(exc).__name__}",
                                  {"Retry-After": RETRY_AFTER_SECONDS})
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

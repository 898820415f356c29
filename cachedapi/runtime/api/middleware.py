"""The api role's two pure ASGI middlewares: header limits, and request metrics.

Pure ASGI (no ``BaseHTTPMiddleware``) so that they cost a few attribute reads
per request. ``HeaderLimits`` answers 431 to a request whose headers are too
many or too large (uvicorn's httptools parser sets no such limit), before any
of the app runs. ``Instrument`` counts every answer by route template, method
and status, and times it.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cachedapi import contract
from cachedapi.runtime import problems
from cachedapi.runtime.api import metrics as metrics_mod

#: Where ``Instrument`` leaves a one-item list for the endpoint to name its route in (a list,
#: because the routing layers below the middleware work on copies of the scope).
ROUTE_SLOT = "cachedapi.route"
MAX_HEADERS = contract.MAX_HEADERS
MAX_HEADER_BYTES = contract.MAX_HEADER_BYTES


class HeaderLimits:
    """431 problem+json past ``MAX_HEADERS`` header fields or ``MAX_HEADER_BYTES`` of them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        detail = f"at most {MAX_HEADERS} header fields and {MAX_HEADER_BYTES} bytes of them are accepted"
        self._body = problems.problem(431, detail)
        self._start: Message = {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", problems.CONTENT_TYPE.encode()),
                (b"content-length", str(len(self._body)).encode()),
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
            ],
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
                await send(self._start)
                await send({"type": "http.response.body", "body": self._body})
                return
        await self.app(scope, receive, send)


class Instrument:
    """Pure ASGI middleware: requests and latency by route template (``other`` off the API), method, status."""

    def __init__(self, app: ASGIApp, metrics: metrics_mod.Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        slot = ["other"]
        scope[ROUTE_SLOT] = slot

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = slot[0]
            method = scope["method"]
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - start)

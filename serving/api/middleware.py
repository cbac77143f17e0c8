"""Pure ASGI middleware: the request-body limits and the per-route request metrics."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import BodyTooLarge, UploadStalled
from serving.metrics import GatewayMetrics


class BodySizeLimit:
    """Raises `BodyTooLarge` from `receive` once a body passes `max_bytes`, and `UploadStalled`
    when a body that is not complete yet sends nothing for `idle_timeout` seconds.

    A declared Content-Length over the limit fails on the first read, before any byte is taken;
    a chunked body (no Content-Length) fails as soon as the running count passes the limit. The
    errors surface where the route reads the body, so the answer (413, 408) is counted for that
    route. Once the body is complete, `receive` (which then waits for the client to leave) is not
    timed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if declared is not None and declared > self.max_bytes:
                raise BodyTooLarge()
            if complete or self.idle_timeout is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.idle_timeout)
                except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                    raise UploadStalled() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Counts requests by route template, method and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # Route templates, not raw paths: unknown paths must not create new label values.
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope.get("method", ""), str(status)).inc()
            self.metrics.request_seconds.labels(label).observe(time.perf_counter() - start)

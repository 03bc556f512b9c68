"""ASGI middleware: the request body size cap and per-request metrics.

Pure ASGI (not `BaseHTTPMiddleware`), so streaming responses pass through untouched and a
client disconnect still reaches the route.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.server.errors import APIError
from tuneforge.server.metrics import Metrics


class BodyLimitMiddleware:
    """Answer 413 for bodies over `max_bytes`: by Content-Length up front, or while reading."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        # Exact paths with their own cap (file uploads are larger than API requests).
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        too_large = APIError(
            413,
            f"Request body too large: the limit is {max_bytes} bytes.",
            code="request_too_large",
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await too_large.response()(scope, receive, send)
                    return
        seen = 0
        started = rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, started, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:  # this path's cap (uploads have their own)
                    # Answer 413 now; the app sees a disconnect and whatever it sends is dropped.
                    rejected = True
                    if not started:
                        started = True
                        await too_large.response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


class MetricsMiddleware:
    """Count requests and errors by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {"code": 500}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            code = str(status["code"])
            self.metrics.requests.labels(route=path, status=code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(route=path, status=code).inc()

"""HTTP plumbing around every request: request id, access log, metrics, body size limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.api.errors import REQUEST_ID_HEADER, error_response, request_id
from app.logs import REQUEST_ID, new_request_id

log = logging.getLogger("app.access")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: logged at DEBUG only


async def observe_request(request: Request,
                          call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Give the request an id (the client's X-Request-ID or a new one), then log and count it."""
    rid = new_request_id(request.headers.get(REQUEST_ID_HEADER))
    request.state.request_id = rid
    token = REQUEST_ID.set(rid)
    start, status = time.perf_counter(), 500
    try:
        response = await call_next(request)
        status = response.status_code
        response.headers[REQUEST_ID_HEADER] = rid
        return response
    finally:
        elapsed = time.perf_counter() - start
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")  # bounded label values, not raw paths
        metrics.HTTP_REQUESTS.labels(request.method, template, status).inc()
        metrics.HTTP_SECONDS.labels(request.method, template).observe(elapsed)
        level = logging.DEBUG if request.url.path in QUIET_PATHS else logging.INFO
        log.log(level, "%s %s %d %.1f ms", request.method, request.url.path, status,
                elapsed * 1000, extra={"method": request.method, "path": request.url.path,
                                       "status": status, "duration_ms": round(elapsed * 1000, 2),
                                       "client": request.client.host if request.client else None})
        REQUEST_ID.reset(token)


class BodyLimitMiddleware:
    """Refuse a body larger than `limit` bytes with a 413, whether its size is declared or it
    arrives chunked, reading no more than `limit` bytes of it. `exempt(method, path)` names the
    routes that enforce a limit of their own (uploads)."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[str, str], bool]) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        # Buffer the body (at most `limit` bytes), then replay it to the app.
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(scope, receive, send)
                return
        replay: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay([replay], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        response = error_response(request, 413, "payload_too_large", f"request body over "
                                  f"{self.limit} bytes (MAX_REQUEST_BYTES)")
        response.headers[REQUEST_ID_HEADER] = request_id(request)
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()
    return replayed

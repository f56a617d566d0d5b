"""Every error becomes JSON {"error": {code, message, request_id}}: mapped here, in one place."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import OverloadedError, ServiceError

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def error_response(request: Request, status: int, code: str, message: str,
                   details: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id(request)}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = ({"Retry-After": str(max(1, round(exc.retry_after)))}
                   if isinstance(exc, OverloadedError) else None)
        return error_response(request, exc.status_code, exc.code, exc.message,
                              exc.details or None, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": _field_path(tuple(e["loc"])), "message": e["msg"]}
                    for e in exc.errors()]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        return error_response(request, 422, "validation_error",
                              f"invalid request: {summary}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s (request %s)", request.method, request.url.path,
                  request_id(request), exc_info=exc)
        return error_response(request, 500, "internal_error",
                              "internal error; the request id identifies it in the logs")

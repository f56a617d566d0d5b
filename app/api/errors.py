"""Every error becomes JSON {"error": {code, message, request_id}}: mapped here, in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors as domain
from app.logs import new_request_id
from app.schemas.common import ErrorResponse

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
# What an error status means, for the OpenAPI schema; a route lists those it can answer.
ERROR_STATUSES = {
    401: "No API key, or an unknown one.",
    403: "The API key lacks the scope this call needs.",
    404: "No such adapter, version or job.",
    409: "Conflicts with the state: an adapter for another base, or a name already in training.",
    413: "Over a size limit: the body, the number of inputs, a text, the training rows.",
    422: "The request is invalid; `details` lists the fields at fault.",
    429: "The training queue is full.",
    503: "Overloaded (retry after `Retry-After` seconds), not ready yet, or the adapter store "
         "cannot be reached.",
    504: "No answer within REQUEST_TIMEOUT_S.",
    507: "The adapter store or the job database cannot be written (disk full or read-only).",
}


@dataclass(frozen=True)
class HttpAnswer:
    """How a domain error is answered over HTTP: its status, and headers derived from it."""

    status: int
    headers: Callable[[Any], dict[str, str]] = lambda exc: {}


def _bearer(exc: domain.UnauthorizedError) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def _retry_after(exc: domain.OverloadedError) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(exc.retry_after)))}


# Domain error -> HTTP answer. A class not listed answers as its nearest listed ancestor.
HTTP_ANSWERS: dict[type[domain.ServiceError], HttpAnswer] = {
    domain.ServiceError: HttpAnswer(400),
    domain.UnauthorizedError: HttpAnswer(401, _bearer),
    domain.ForbiddenError: HttpAnswer(403),
    domain.NotFoundError: HttpAnswer(404),
    domain.IncompatibleAdapterError: HttpAnswer(409),
    domain.NameInTrainingError: HttpAnswer(409),
    domain.PayloadTooLargeError: HttpAnswer(413),
    domain.InvalidNameError: HttpAnswer(422),
    domain.InvalidInputError: HttpAnswer(422),
    domain.InvalidAdapterError: HttpAnswer(422),
    domain.JobQueueFullError: HttpAnswer(429),
    domain.ClientGoneError: HttpAnswer(499),  # nginx's "client closed request"
    domain.UnsupportedModelError: HttpAnswer(500),
    domain.OverloadedError: HttpAnswer(503, _retry_after),
    domain.NotReadyError: HttpAnswer(503),
    domain.StoreUnavailableError: HttpAnswer(503),
    domain.RequestTimeoutError: HttpAnswer(504),
    domain.StoreWriteError: HttpAnswer(507),
}


def http_answer(exc: domain.ServiceError) -> HttpAnswer:
    """The answer listed for the error's class or, failing that, its nearest ancestor."""
    return next(HTTP_ANSWERS[cls] for cls in type(exc).__mro__ if cls in HTTP_ANSWERS)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: the error statuses it can answer, each with the error body."""
    return {s: {"model": ErrorResponse, "description": ERROR_STATUSES[s]} for s in statuses}


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = new_request_id(request.headers.get(REQUEST_ID_HEADER))
        request.state.request_id = rid
    return rid


def error_response(request: Request, status: int, code: str, message: str,
                   details: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id(request)}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def service_error_response(request: Request, exc: domain.ServiceError) -> JSONResponse:
    answer = http_answer(exc)
    return error_response(request, answer.status, exc.code, exc.message, exc.details or None,
                          answer.headers(exc) or None)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(domain.ServiceError)
    async def _service_error(request: Request, exc: domain.ServiceError) -> JSONResponse:
        return service_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": _field_path(tuple(e["loc"])), "message": e["msg"]}
                    for e in exc.errors()]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        return error_response(request, 422, "validation_error",
                              f"invalid request: {summary}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body the framework cannot parse (not UTF-8, broken
            # multipart): invalid like malformed JSON, which FastAPI reports as a 422
            return error_response(request, 422, "validation_error",
                                  f"invalid request: body: {exc.detail}")
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s (request %s)", request.method, request.url.path,
                  request_id(request), exc_info=exc)
        # Answered by Starlette's outermost middleware, past the one that adds the header.
        return error_response(request, 500, "internal_error",
                              "internal error; the request id identifies it in the logs",
                              headers={REQUEST_ID_HEADER: request_id(request)})

"""What the client raises: the API's error body as an exception, one class per status family."""

from __future__ import annotations

from typing import Any

import httpx

from app.schemas.jobs import JobView


class AdapterServeError(Exception):
    """A non-2xx answer: the API's `code`, `message`, `request_id` and `details`, and the status."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 details: Any = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}"
                         + (f" (request {request_id})" if request_id else ""))
        self.status, self.code, self.message = status, code, message
        self.request_id, self.details, self.retry_after = request_id, details, retry_after


class Unauthorized(AdapterServeError):
    """401: no API key, or an unknown one."""


class Forbidden(AdapterServeError):
    """403: the key lacks the scope the call needs."""


class NotFound(AdapterServeError):
    """404: no such adapter, version or job."""


class Conflict(AdapterServeError):
    """409: an adapter for another base, or a name already in training."""


class PayloadTooLarge(AdapterServeError):
    """413: over a size limit."""


class Invalid(AdapterServeError):
    """422: the request is invalid; `details` lists the fields at fault."""


class QueueFull(AdapterServeError):
    """429: the training queue is full."""


class Overloaded(AdapterServeError):
    """503: overloaded or not ready; retry after `retry_after` seconds."""


class GatewayTimeout(AdapterServeError):
    """504: no answer within the server's REQUEST_TIMEOUT_S."""


class ServerError(AdapterServeError):
    """5xx otherwise: an internal error (the request id finds it in the logs), or a full store."""


BY_STATUS: dict[int, type[AdapterServeError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: Invalid, 429: QueueFull, 503: Overloaded, 504: GatewayTimeout}


class JobFailed(Exception):
    """wait(): the job ended failed or cancelled; `job` is its final state, `job.error` why."""

    def __init__(self, job: JobView) -> None:
        super().__init__(f"job {job.job_id} ({job.name}) {job.status}"
                         + (f": {job.error}" if job.error else ""))
        self.job = job


def error_from(response: httpx.Response) -> AdapterServeError:
    """The exception for a non-2xx answer, read from the API's error body when it has one."""
    status = response.status_code
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        request_id, details = body.get("request_id"), body.get("details")
    except (ValueError, KeyError, TypeError):  # not the API's body: a proxy's page, say
        code, message, details = "http_error", response.text[:500] or response.reason_phrase, None
        request_id = response.headers.get("X-Request-ID")
    retry = response.headers.get("Retry-After")
    cls = BY_STATUS.get(status, ServerError if status >= 500 else AdapterServeError)
    return cls(status, code, message, request_id, details,
               float(retry) if retry and retry.isdigit() else None)

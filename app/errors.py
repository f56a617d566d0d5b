"""Domain errors: raised by services, mapped to HTTP status codes in one place (app.api.errors)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error the caller can act on: a stable code, a message that says what to fix."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer must carry (Retry-After, WWW-Authenticate)."""
        return {}


class NotFoundError(ServiceError):
    status_code = 404
    code = "not_found"


class AdapterNotFoundError(NotFoundError):
    code = "adapter_not_found"


class InvalidNameError(ServiceError):
    status_code = 422
    code = "invalid_name"


class InvalidInputError(ServiceError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    code = "payload_too_large"


class InvalidAdapterError(ServiceError):
    """The adapter file or its metadata is corrupt, truncated or inconsistent."""

    status_code = 422
    code = "invalid_adapter"


class IncompatibleAdapterError(ServiceError):
    """A well-formed adapter that does not fit the loaded base model."""

    status_code = 409
    code = "incompatible_adapter"


class UnsupportedModelError(ServiceError):
    status_code = 500
    code = "unsupported_model"


class OverloadedError(ServiceError):
    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class RequestTimeoutError(ServiceError):
    status_code = 504
    code = "timeout"


class StoreWriteError(ServiceError):
    status_code = 507
    code = "store_write_failed"


class NotReadyError(ServiceError):
    status_code = 503
    code = "not_ready"


class ClientGoneError(ServiceError):
    status_code = 499
    code = "client_closed_request"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class NameInTrainingError(ServiceError):
    status_code = 409
    code = "name_in_training"


class JobQueueFullError(ServiceError):
    status_code = 429
    code = "job_queue_full"


class UnauthorizedError(ServiceError):
    status_code = 401
    code = "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ServiceError):
    status_code = 403
    code = "forbidden"

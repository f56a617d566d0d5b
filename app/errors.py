"""Domain errors: raised by services; each carries a stable code, never HTTP (see app.api.errors)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error the caller can act on: a stable code, a message that says what to fix."""

    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(ServiceError):
    code = "not_found"


class AdapterNotFoundError(NotFoundError):
    code = "adapter_not_found"


class InvalidNameError(ServiceError):
    code = "invalid_name"


class InvalidInputError(ServiceError):
    code = "invalid_input"


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"


class InvalidAdapterError(ServiceError):
    """The adapter file or its metadata is corrupt, truncated or inconsistent."""

    code = "invalid_adapter"


class UnsupportedAdapterError(InvalidAdapterError):
    """An adapter saved by another library with an option this service cannot compute exactly."""

    code = "unsupported_adapter"


class IncompatibleAdapterError(ServiceError):
    """A well-formed adapter that does not fit the loaded base model."""

    code = "incompatible_adapter"


class UnsupportedModelError(ServiceError):
    code = "unsupported_model"


class OverloadedError(ServiceError):
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class ReplicaUnavailableError(OverloadedError):
    """On a cluster: the replica answering died or cannot be reached; retrying reaches another."""

    code = "replica_unavailable"


class RequestTimeoutError(ServiceError):
    code = "timeout"


class StoreWriteError(ServiceError):
    code = "store_write_failed"


class StoreUnavailableError(ServiceError):
    """The adapter store cannot be reached (an object store's endpoint or bucket): retry later."""

    code = "store_unavailable"


class NotReadyError(ServiceError):
    code = "not_ready"


class ClientGoneError(ServiceError):
    code = "client_closed_request"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class NameInTrainingError(ServiceError):
    code = "name_in_training"


class JobQueueFullError(ServiceError):
    code = "job_queue_full"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class ForbiddenError(ServiceError):
    code = "forbidden"

"""Bodies shared by every endpoint: errors and health."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None
    details: dict[str, Any] | list[Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str


class TrainingState(BaseModel):
    workers: int  # live worker processes
    running: int  # jobs
    queued: int


class Readiness(BaseModel):
    status: str
    base_model: str | None = None
    device: str | None = None
    adapters: int = 0
    resident_adapters: int = 0
    queue_rows: int = 0
    training: TrainingState | None = None
    problems: list[str] = []

"""Bodies shared by every endpoint: errors and health."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.status import ReadinessReport


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

    @classmethod
    def of(cls, report: ReadinessReport) -> Readiness:
        s = report.status
        return cls(status="ready" if report.ready else "degraded", base_model=report.base_model,
                   device=report.device, adapters=s.adapters_stored,
                   resident_adapters=s.residency.device.adapters, queue_rows=s.queue_rows,
                   training=TrainingState(workers=s.workers_alive, running=s.jobs_in("running"),
                                          queued=s.jobs_in("queued")),
                   problems=list(report.problems))

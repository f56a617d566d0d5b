"""Bodies shared by every endpoint: errors and health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

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


class WhoAmI(BaseModel):
    keys_required: bool = Field(description="Whether the service was started with API keys.")
    scope: Literal["predict", "admin"] | None = Field(
        description="What the key sent may do (admin when no keys are required); null when "
        "keys are required and none was sent.")


class TaskTypeInfo(BaseModel):
    name: str
    training_defaults: dict[str, Any] = Field(
        description="The training config of a job that sets no field (per-task values filled).")


class TaskTypeList(BaseModel):
    task_types: list[TaskTypeInfo]

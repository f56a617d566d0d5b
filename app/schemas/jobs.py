"""Bodies of POST /adapters (training) and the /jobs endpoints."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.tasks import TaskType
from app.training.config import TrainConfig
from app.training.jobs import Job, JobStatus


class TrainRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "sentiment", "task_type": "classification",
        "train": [{"text": "a gripping, funny film", "label": "positive"},
                  {"text": "dull and far too long", "label": "negative"}],
        "config": {"epochs": 3},
    }]})

    name: str = Field(description="Adapter name: [a-z0-9][a-z0-9_-]{0,63}.")
    task_type: TaskType
    labels: list[str] | None = Field(None, description="Class names or BIO tags; default: those "
                                     "in train.")
    train: list[Any] = Field(description='Rows {"text", "text_pair"?, "label"}; for '
                             'token_classification {"tokens", "tags"} or {"text", "entities"}; '
                             'for question_answering {"question", "context", "answers": '
                             '{"text": [...], "answer_start": [...]}}.')
    validation: list[Any] | None = Field(None, description="Rows; default: a split of train.")
    config: TrainConfig = Field(default_factory=TrainConfig)
    description: str = Field("", max_length=2000)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


class AdapterRef(BaseModel):
    name: str
    version: int


class JobView(BaseModel):
    job_id: str
    name: str
    task_type: str
    status: JobStatus
    progress: dict[str, Any] | None = Field(
        None, description="epoch, epochs, step, total_steps, fraction, eta_seconds, train_loss.")
    train_loss: float | None = Field(None, description="Latest training loss.")
    metrics: list[dict[str, Any]] = Field(
        default_factory=list, description="Validation metrics per epoch.")
    loss_curve: list[list[float]] = Field(
        default_factory=list, description="Training loss as [step, loss] pairs: one per step, "
        "or (long jobs) the mean of the steps since the previous pair; at most 512.")
    search: dict[str, Any] | None = Field(
        None, description="A search (config.search): its trials table as it grows, each trial's "
        "config, state, score, seconds, parameters and cost; then the winner and why.")
    result: dict[str, Any] | None = Field(None, description="Best epoch and its metrics.")
    adapter: AdapterRef | None = Field(None, description="The stored adapter, on success.")
    error: str | None = None
    cancel_requested: bool = False
    labels: list[str] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    train_rows: int = 0
    validation_rows: int = 0
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            job_id=job.id, name=job.name, task_type=job.task_type, status=job.status,
            progress=job.progress,
            train_loss=(job.progress or {}).get("train_loss"), metrics=job.history or [],
            loss_curve=job.loss_curve or [], search=job.search,
            result=job.result,
            adapter=AdapterRef(name=job.name, version=job.adapter_version)
            if job.adapter_version else None,
            error=job.error, cancel_requested=job.cancel_requested,
            labels=job.spec.get("labels"), config=job.spec.get("config", {}),
            train_rows=job.spec.get("train_rows", 0),
            validation_rows=job.spec.get("validation_rows", 0),
            created_at=_iso(job.created_at) or "", started_at=_iso(job.started_at),
            finished_at=_iso(job.finished_at),
        )


class JobList(BaseModel):
    jobs: list[JobView]

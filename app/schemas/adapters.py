"""Response bodies of the /adapters endpoints: wire copies, built from the stored metadata."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.adapters.service import AdapterInfo
from app.constants import FORMAT_VERSION, NAME_PATTERN
from app.model.adapter import AdapterConfig
from app.tasks import HeadConfig, TaskType

# The wire models declare their own fields so that the disk format (app.adapters.format) can
# change without changing the API; the adapter's and the head's configs are domain types (what
# the model and the task need), shown as they are. Built from the stored metadata, which may
# carry fields the API does not show: those are dropped (extra="ignore").


class BaseModelRef(BaseModel):
    """The base an adapter was trained on."""

    name: str
    model_type: str
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    fingerprint: str


class AdapterSummary(BaseModel):
    name: str
    latest_version: int
    versions: list[int]
    task_type: str
    labels: list[str]
    created_at: str

    @classmethod
    def of(cls, info: AdapterInfo) -> AdapterSummary:
        meta = info.meta
        return cls(name=meta.name, latest_version=meta.version, versions=info.versions,
                   task_type=meta.task_type, labels=meta.labels, created_at=meta.created_at)


class AdapterList(BaseModel):
    adapters: list[AdapterSummary]


class AdapterDetail(BaseModel):
    # No class docstring: it would become the schema's description, which the API has not had.
    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(0, ge=0)
    task_type: TaskType
    labels: list[str] = Field(default_factory=list)
    adapter_config: AdapterConfig = Field(default_factory=AdapterConfig)
    head_config: HeadConfig
    base_model: BaseModelRef
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    created_at: str = Field(default_factory=str)  # always set from the stored metadata
    weights_sha256: str = ""
    versions: list[int] = Field(description="Every stored version of this name.")
    resident: bool = Field(description="Whether this version is loaded on the device now.")

    @classmethod
    def of(cls, info: AdapterInfo) -> AdapterDetail:
        """The stored metadata of one version, with what the service knows about its name."""
        return cls.model_validate({**info.meta.model_dump(), "versions": info.versions,
                                   "resident": info.resident})


class DeleteResult(BaseModel):
    name: str
    deleted_versions: list[int]


class ReloadResult(BaseModel):
    changed: bool
    adapters: int
    versions: int

"""Response bodies of the /adapters endpoints."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.adapters.format import AdapterMetadata


class AdapterSummary(BaseModel):
    name: str
    latest_version: int
    versions: list[int]
    task_type: str
    labels: list[str]
    created_at: str


class AdapterList(BaseModel):
    adapters: list[AdapterSummary]


class AdapterDetail(AdapterMetadata):
    versions: list[int] = Field(description="Every stored version of this name.")
    resident: bool = Field(description="Whether this version is loaded on the device now.")


class DeleteResult(BaseModel):
    name: str
    deleted_versions: list[int]


class ReloadResult(BaseModel):
    changed: bool
    adapters: int
    versions: int

"""Response bodies of the /adapters endpoints: wire copies, built from the stored metadata."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.adapters.index import NameSummary
from app.adapters.service import AdapterInfo, AdapterPage
from app.adapters.tiers import Tier
from app.constants import FORMAT_VERSION, NAME_PATTERN, NAME_RE
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
    size_bytes: int = Field(description="Size of the newest version's weights file.")
    metrics: dict[str, Any] = Field(description="The newest version's validation metrics of "
                                    "its stored epoch.")
    tier: Literal["device", "host", "disk"] = Field(
        description="Where the newest version is held now (device: resident, served at once).")

    @classmethod
    def of(cls, found: NameSummary, tier: Tier) -> AdapterSummary:
        return cls(name=found.name, latest_version=found.versions[-1], versions=found.versions,
                   task_type=found.task_type, labels=found.labels, created_at=found.created_at,
                   size_bytes=found.size, metrics=found.metrics, tier=tier.value)


class AdapterList(BaseModel):
    adapters: list[AdapterSummary]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; "
                                    "null on the last page.")

    @classmethod
    def of(cls, page: AdapterPage) -> AdapterList:
        return cls(adapters=[AdapterSummary.of(a, t) for a, t in zip(page.adapters, page.tiers,
                                                                      strict=True)],
                   next_cursor=None if page.last is None else encode_cursor(page.last))


# A cursor is the last name of a page, opaque to clients so that its form may change.
def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The name a cursor stands for; ValueError (a 422 naming `cursor`) when it is not one."""
    if cursor is None:
        return None
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        name = ""
    if not NAME_RE.match(name):
        raise ValueError("not a cursor from GET /adapters (pass next_cursor as it came)")
    return name


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
    source: dict[str, Any] = Field(default_factory=dict, description="Imported from AdapterHub "
                                   "or PEFT: the library, its config and the files read.")
    warnings: list[str] = Field(default_factory=list, description="What an import accepted but "
                                "you should know, e.g. a different base checkpoint name.")
    versions: list[int] = Field(description="Every stored version of this name.")
    resident: bool = Field(description="Whether this version is on the device now (tier 'device').")
    tier: Literal["device", "host", "disk"] = Field(
        description="Where this version is held now: on the device (served at once), in host "
        "memory (decoded, copied to the device on use) or only on disk (read, checked and "
        "decoded on use).")

    @classmethod
    def of(cls, info: AdapterInfo) -> AdapterDetail:
        """The stored metadata of one version, with what the service knows about its name."""
        return cls.model_validate({**info.meta.model_dump(), "versions": info.versions,
                                   "resident": info.tier == "device", "tier": info.tier.value})


class DeleteResult(BaseModel):
    name: str
    deleted_versions: list[int]


class ReloadResult(BaseModel):
    changed: bool
    adapters: int
    versions: int

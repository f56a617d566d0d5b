"""Typed snapshots of a running service, for /readyz and /metrics; imports nothing of the service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobProgress:
    """A running training job and the share of its optimiser steps done."""

    job_id: str
    name: str  # the adapter it trains
    fraction: float


@dataclass(frozen=True)
class DeviceMemory:
    """The GPU's memory, as the caching allocator sees it."""

    allocated: int  # bytes held by tensors
    reserved: int  # bytes held by the allocator, tensors included
    total: int


@dataclass(frozen=True)
class TierState:
    """One memory tier of the adapters: how many it holds, their bytes and its budget."""

    adapters: int
    bytes: int
    budget: int


@dataclass(frozen=True)
class AdapterResidency:
    """Where the adapters are held, and what lookups and loads have happened since the start."""

    device: TierState
    host: TierState
    lookups: dict[str, int]  # request lookups by the tier that held the adapter: device/host/disk
    hit_ratio: float  # share of lookups answered from a memory tier
    cold_loads: int  # reads from disk (checksum, header check, decode)
    hot_path_loads: int  # of those, made by a batch rather than the loader thread
    promotions: int  # copies into the device tier
    evictions: dict[str, int]  # by tier: device/host


@dataclass(frozen=True)
class ServiceStatus:
    """The state of the service at one moment."""

    queue_rows: int  # rows waiting for a forward pass
    adapters_stored: int  # names in the store
    residency: AdapterResidency
    jobs: dict[str, int]  # training jobs by status; a status without jobs may be absent
    running: tuple[JobProgress, ...]
    workers_alive: int  # training worker processes
    device_memory: DeviceMemory | None  # None off CUDA

    def jobs_in(self, status: str) -> int:
        return self.jobs.get(status, 0)


@dataclass(frozen=True)
class ReadinessReport:
    """Whether the service can take work: what stops it, and the facts a probe shows."""

    problems: tuple[str, ...]  # empty when ready
    base_model: str
    device: str
    status: ServiceStatus

    @property
    def ready(self) -> bool:
        return not self.problems

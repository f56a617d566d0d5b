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
class ServiceStatus:
    """The state of the service at one moment."""

    queue_rows: int  # rows waiting for a forward pass
    adapters_stored: int  # names in the store
    adapters_resident: int  # versions loaded on the device
    adapters_capacity: int  # MAX_RESIDENT_ADAPTERS
    adapter_loads: int  # since the start
    adapter_evictions: int  # since the start
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

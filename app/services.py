"""The long-lived objects of a running service, built once from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from app import memory
from app.adapters.backends import open_store
from app.adapters.registry import AdapterRegistry
from app.adapters.service import AdapterService
from app.adapters.storage import Store
from app.adapters.tiers import TierBudgets
from app.config import Settings
from app.model.encoder import BaseModelInfo, FrozenEncoder
from app.serving.batcher import Batcher, BatchLimits
from app.serving.engine import InferenceEngine, Row
from app.serving.predictor import PredictionService, PredictLimits
from app.status import DeviceMemory, JobProgress, ReadinessReport, ServiceStatus
from app.training.jobs import Job
from app.training.manager import JobManager

log = logging.getLogger(__name__)
# (settings, store, on_stored, served base) -> the job manager; JobManager itself on one machine.
JobsFactory = Callable[[Settings, Store, Callable[[str, int], object], BaseModelInfo], JobManager]

GC_FREEZE_CHECK_S = 10.0  # how often the adapters held are checked for having settled


@dataclass
class Services:
    settings: Settings
    encoder: FrozenEncoder
    store: Store
    registry: AdapterRegistry
    adapters: AdapterService
    batcher: Batcher[Row]
    predictor: PredictionService
    jobs: JobManager
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, make_jobs: JobsFactory = JobManager) -> Services:
        torch.set_num_threads(settings.num_threads or os.cpu_count() or 1)
        encoder = FrozenEncoder.load(settings.base_model, settings.device, settings.dtype,
                                     settings.max_seq_length)
        store = open_store(settings.adapters_dir, settings.adapter_cache_path)
        store.open()  # an unreachable store stops the start here, naming it
        store.clean_stale()
        registry = AdapterRegistry(store, encoder, tier_budgets(settings, encoder.device))
        registry.refresh(rescan=True)  # what changed while no server ran; preloads start
        engine = InferenceEngine(encoder, registry)
        batcher: Batcher[Row] = Batcher(engine.run, lambda row: len(row.feature), BatchLimits(
            max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
            wait_s=settings.batch_wait_ms / 1000, max_queue_rows=settings.max_queue_rows,
            enabled=settings.batching_enabled,
            heavy_batch_tokens=explain_batch_tokens(settings, encoder.device),
        ), width_of=lambda row: row.width)
        predictor = PredictionService(registry, encoder.tokenizer, batcher, PredictLimits(
            settings.max_inputs_per_request, settings.max_text_chars, settings.request_timeout_s,
            settings.qa_doc_stride, settings.metrics_task_labels, settings.explain_max_steps,
            settings.explain_tolerance))
        adapters = AdapterService(store, registry, settings.max_adapter_bytes,
                                  settings.strict_base)
        jobs = make_jobs(settings, store, registry.ensure_indexed, encoder.info)
        return cls(settings, encoder, store, registry, adapters, batcher, predictor, jobs)

    def readiness(self) -> ReadinessReport:
        """Whether the store is readable and the batching and job workers are alive."""
        problems = []
        try:
            self.store.check_readable()
        except OSError as exc:
            problems.append(f"adapter store not readable: {exc}")
        if not self.batcher.running:
            problems.append("the batching worker has stopped")
        if not self.jobs.dispatching:
            problems.append("the training job dispatcher has stopped")
        return ReadinessReport(tuple(problems), self.encoder.info.name, str(self.encoder.device),
                               self.status())

    def status(self) -> ServiceStatus:
        """A snapshot of the queue, the adapters, the training jobs and the device's memory."""
        registry = self.registry
        return ServiceStatus(
            queue_rows=self.batcher.queued_rows,
            adapters_stored=registry.counts()[0],
            residency=registry.residency(),
            jobs=self.jobs.counts(),
            running=tuple(_progress(job) for job in self.jobs.running()),
            workers_alive=self.jobs.workers_alive(),
            device_memory=_device_memory(self.encoder.device),
        )

    async def start(self) -> None:
        await self.batcher.start()
        await self.jobs.start()
        if self.settings.store_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(
                self._poll_store(self.settings.store_poll_seconds, rescan=False), name="store-poll"))
        if self.settings.store_rescan_seconds > 0:
            self._tasks.append(asyncio.create_task(
                self._poll_store(self.settings.store_rescan_seconds, rescan=True),
                name="store-rescan"))
        if self.settings.malloc_trim_seconds > 0 and memory.can_trim():
            self._tasks.append(asyncio.create_task(self._trim_memory(), name="malloc-trim"))
        self._tasks.append(asyncio.create_task(self._freeze_adapters(), name="gc-freeze"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.jobs.stop()
        await self.batcher.stop()
        await asyncio.to_thread(self.registry.close)

    async def _trim_memory(self) -> None:
        """Keep resident memory flat under load (see app.memory)."""
        while True:
            await asyncio.sleep(self.settings.malloc_trim_seconds)
            await asyncio.to_thread(memory.trim)

    async def _freeze_adapters(self) -> None:
        """Keep the garbage collector's full collections off the adapters held in memory: once
        what is held has changed and then stayed the same for one check (preloading done, an
        import burst over), freeze the heap (see app.memory.freeze_long_lived)."""
        watch = Settled(self._held())
        while True:
            await asyncio.sleep(GC_FREEZE_CHECK_S)
            held = self._held()
            if watch.check(held):
                t0 = time.perf_counter()
                objects = memory.freeze_long_lived()
                log.info("%d objects excluded from garbage collection (%d adapters in memory) "
                         "in %.0f ms", objects, held[0] + held[1], (time.perf_counter() - t0) * 1e3)

    def _held(self) -> tuple[int, int, int]:
        r = self.registry.residency()
        return r.device.adapters, r.host.adapters, r.promotions

    async def _poll_store(self, seconds: float, rescan: bool) -> None:
        """Pick up adapters other processes added, replaced or deleted: through the store's
        index (cheap, often), or by a rescan of the files (slow, rarely: changes made by hand)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(self.registry.refresh, rescan)
            except Exception:  # a bad moment on disk must not stop the polling
                log.exception("store poll failed")


class Settled:
    """Says True once per change of a value: when it differs from what it was the last time it
    said True, and has stayed the same since the previous check."""

    def __init__(self, value: object) -> None:
        self._acted_on = self._last = value

    def check(self, value: object) -> bool:
        settled = value == self._last and value != self._acted_on
        if settled:
            self._acted_on = value
        self._last = value
        return settled


def tier_budgets(settings: Settings, device: torch.device) -> TierBudgets:
    """The memory tiers' budgets: as set, or derived from the memory free at start-up.

    On a GPU: a quarter of its free memory and a quarter of the available host memory (page-
    locked, so the copies to the device are asynchronous). On a CPU the device is host memory:
    the bank is the only memory tier, sized by DEVICE_ADAPTER_BYTES, else HOST_ADAPTER_BYTES,
    else half the available memory.
    """
    host = settings.host_adapter_bytes
    if device.type == "cuda":
        if host is None:  # page-locked on a GPU host: a quarter, not half
            host = memory.available_bytes() // 4
        dev = settings.device_adapter_bytes
        if dev is None:
            free, _ = torch.cuda.mem_get_info(device)
            dev = free // 4
    else:
        if host is None:
            host = memory.available_bytes() // 2
        dev = settings.device_adapter_bytes if settings.device_adapter_bytes is not None else host
        host = 0
    budgets = TierBudgets(device_bytes=dev, host_bytes=host,
                          device_adapters=settings.max_resident_adapters,
                          preload=settings.preload_adapters)
    log.info("adapter memory: device tier %.0f MiB, host tier %.0f MiB%s", dev / 2**20,
             host / 2**20, " (on CPU the bank is in host memory)" if device.type != "cuda" else "")
    return budgets


def explain_batch_tokens(settings: Settings, device: torch.device) -> int:
    """A heavy pass's budget: as set, or the plain one on a GPU (where larger passes run
    faster per step) and an eighth of it on a CPU (where a pass is compute-bound: a smaller one
    costs nothing per step and keeps the plain rows that wait behind it waiting less)."""
    if settings.explain_batch_tokens is not None:
        return settings.explain_batch_tokens
    return settings.max_batch_tokens if device.type == "cuda" else settings.max_batch_tokens // 8


def _progress(job: Job) -> JobProgress:
    return JobProgress(job.id, job.name, float((job.progress or {}).get("fraction", 0.0)))


def _device_memory(device: torch.device) -> DeviceMemory | None:
    if device.type != "cuda":
        return None
    return DeviceMemory(allocated=torch.cuda.memory_allocated(device),
                        reserved=torch.cuda.memory_reserved(device),
                        total=torch.cuda.get_device_properties(device).total_memory)

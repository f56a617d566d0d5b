"""Training on a Ray cluster: one job queue for every replica, jobs run as Ray tasks.

The queue is the same JobManager and SQLite JobDB as on one machine, owned by one detached,
named actor pinned to the head node (`JobQueue`): its file is on the head node's disk, so losing
any serving replica (or a worker node) loses no job. Replicas reach it through `RemoteJobDB`;
each job trains in a Ray task with the resources it asks for (`CLUSTER_TRAIN_CPUS`,
`CLUSTER_TRAIN_GPUS`), never inside a serving replica, and reports to the queue the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from app.adapters.backends import open_store
from app.adapters.storage import Store
from app.config import Settings
from app.errors import NotReadyError
from app.model.encoder import BaseModelInfo
from app.services import JobsFactory
from app.training.jobs import Curve, Job, JobStatus
from app.training.manager import JobManager, Worker
from app.training.worker import WorkerSettings, execute_job

log = logging.getLogger(__name__)
QUEUE_NAME = "adapter-serve-jobs"
NAMESPACE = "adapter-serve"
HEAD_RESOURCE = "node:__internal_head__"  # every Ray head node has it
# The JobRecords calls the replicas and the training tasks make; a create or a cancel also
# wakes the queue's dispatcher.
CALLS = frozenset({"create", "get", "list", "counts", "request_cancel", "payload", "set_worker",
                   "report_progress", "report_epoch", "report_search", "cancel_requested",
                   "finish"})
WAKES = frozenset({"create", "request_cancel"})


class JobQueue:
    """The cluster's job queue (a Ray actor): the JobDB, and the manager that dispatches."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        store = open_store(self.settings.adapters_dir, self.settings.adapter_cache_path)
        self.manager = JobManager(self.settings, store, lambda name, version: None,
                                  launcher=self._launch)
        self._started: asyncio.Task[None] | None = None

    async def call(self, method: str, *args: Any) -> Any:
        """One JobRecords call, run off the event loop (SQLite waits on the disk)."""
        if method not in CALLS:
            raise ValueError(f"no job record call {method!r}")
        if self._started is None:  # the first call after a start or a restart
            self._started = asyncio.create_task(self.manager.start())
        await self._started
        result = await asyncio.to_thread(getattr(self.manager.db, method), *args)
        if method in WAKES:
            self.manager.wake()
        return result

    def _launch(self, job_id: str, settings: WorkerSettings) -> Worker:
        me = ray.get_runtime_context().current_actor
        ref = _train.options(name=f"train-{job_id[:8]}", num_cpus=self.settings.cluster_train_cpus,
                             num_gpus=self.settings.cluster_train_gpus).remote(
            job_id, settings, me, max(1, int(self.settings.cluster_train_cpus)))
        log.info("job %s started as Ray task %s", job_id, ref.task_id().hex())
        return RayWorker(ref)


class RayWorker:
    """A job's Ray task, as the dispatcher sees it."""

    def __init__(self, ref: ray.ObjectRef[None]) -> None:
        self.ref = ref

    def alive(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0)
        return not ready

    def exit_reason(self) -> str:
        try:
            ray.get(self.ref)
        except RayTaskError as exc:  # raised in the task, past its own error handling
            log.error("training task failed: %s", exc)
            return (f"the training task failed ({type(exc.cause).__name__}: "
                    f"{_first_line(exc.cause)}); nothing was stored")
        except RayError as exc:
            return (f"the training task ended without a result ({type(exc).__name__}: "
                    f"{_first_line(exc)}); nothing was stored")
        return "the training task ended without a result; nothing was stored"

    def kill(self) -> None:
        ray.cancel(self.ref, force=True)

    def stop(self, timeout: float) -> None:
        ray.cancel(self.ref, force=True)
        ray.wait([self.ref], timeout=timeout)


@ray.remote(max_retries=0)
def _train(job_id: str, settings: WorkerSettings, queue: Any, threads: int) -> None:
    """One job, in a Ray worker process of whichever node has the resources asked for."""
    import torch

    torch.set_num_threads(settings.train_threads or threads)
    try:
        execute_job(job_id, settings, RemoteJobDB(queue), parent_alive=lambda: True)
    except Exception:  # the job could not even record its failure: the queue says it died
        log.exception("training job %s: its task failed", job_id)
        raise


class RemoteJobDB:
    """The queue's JobDB, reached through its actor: what a replica or a training task uses."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(self.queue.call.remote(method, *args))
        except RayTaskError as exc:  # a domain error raised there is raised here, as itself
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise
        except RayActorError as exc:
            raise NotReadyError(f"the training job queue cannot be reached now (it restarts "
                                f"on the head node): {_first_line(exc)}") from exc

    def create(self, name: str, task_type: str, spec: dict[str, Any], payload: dict[str, Any],
               max_queued: int) -> Job:
        job: Job = self._call("create", name, task_type, spec, payload, max_queued)
        return job

    def get(self, job_id: str) -> Job:
        job: Job = self._call("get", job_id)
        return job

    def list(self, status: str | None = None, limit: int = 100) -> list[Job]:
        jobs: list[Job] = self._call("list", status, limit)
        return jobs

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = self._call("counts")
        return counts

    def claim_next(self) -> Job | None:
        raise NotImplementedError("only the queue's own manager claims jobs")

    def request_cancel(self, job_id: str) -> Job:
        job: Job = self._call("request_cancel", job_id)
        return job

    def requeue(self, job_id: str) -> None:
        raise NotImplementedError("only the queue's own manager requeues jobs")

    def payload(self, job_id: str) -> dict[str, Any]:
        payload: dict[str, Any] = self._call("payload", job_id)
        return payload

    def set_worker(self, job_id: str, pid: int) -> None:
        self._call("set_worker", job_id, pid)

    def report_progress(self, job_id: str, progress: dict[str, Any], loss_curve: Curve) -> None:
        self._call("report_progress", job_id, progress, loss_curve)

    def report_epoch(self, job_id: str, record: dict[str, Any], loss_curve: Curve) -> None:
        self._call("report_epoch", job_id, record, loss_curve)

    def report_search(self, job_id: str, search: dict[str, Any]) -> None:
        self._call("report_search", job_id, search)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._call("cancel_requested", job_id))

    def finish(self, job_id: str, status: JobStatus, error: str | None = None,
               adapter_version: int | None = None, result: dict[str, Any] | None = None) -> bool:
        return bool(self._call("finish", job_id, status, error, adapter_version, result))


def job_queue(settings: dict[str, Any]) -> Any:
    """The cluster's job queue actor: started on the head node by the first replica that asks,
    found by name by the others; Ray restarts it (on the head node) if its process dies."""
    actor = ray.remote(JobQueue).options(
        name=QUEUE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=-1, num_cpus=0, resources={HEAD_RESOURCE: 0.001})
    return actor.remote(settings)


def cluster_jobs(overrides: dict[str, Any]) -> JobsFactory:
    """A replica's job managers: they submit, read and cancel through the cluster's queue."""
    queue = job_queue(overrides)

    def make(settings: Settings, store: Store, on_stored: Callable[[str, int], object],
             base: BaseModelInfo) -> JobManager:
        return JobManager(settings, store, on_stored, base, db=RemoteJobDB(queue),
                          dispatch=False)

    return make


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

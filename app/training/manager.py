"""The job queue in the API process: submit, cancel, and one worker process per running job.

On a cluster the queue and its workers live elsewhere (app.cluster.jobs): a serving replica's
manager submits, reads and cancels only, and the one dispatching manager launches Ray tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Protocol

from app.adapters.format import AdapterMetadata
from app.adapters.storage import Store, validate_name
from app.config import Settings
from app.errors import InvalidInputError, ServiceError
from app.training.config import TrainConfig
from app.training.data import prepare
from app.training.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, JobDB, JobRecords
from app.training.search_rows import search_split
from app.training.worker import CANCELLED_ERROR, WorkerSettings, job_result, run_job

if TYPE_CHECKING:  # the manager itself never loads a model
    from app.model.encoder import BaseModelInfo

log = logging.getLogger(__name__)
DISPATCH_INTERVAL_S = 0.2  # while workers run: how soon an exit or a cancel is acted on
# With no worker running only this process queues jobs, and it wakes the dispatcher when it
# does: the tick is a safety net, rare so that an idle server costs next to no CPU.
IDLE_DISPATCH_INTERVAL_S = 5.0
SERVICE_DIED = "interrupted: the service stopped while this job was running; nothing was stored"


@dataclass(frozen=True)
class TrainRequest:
    name: str
    task_type: str
    train: list[Any]
    validation: list[Any] | None = None
    labels: list[str] | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the training worker was killed by {name}{hint}; nothing was stored"
    return f"the training worker exited with code {exitcode} without a result; nothing was stored"


class Worker(Protocol):
    """A running job's worker, as the dispatcher sees it: a process here, a Ray task on a
    cluster."""

    def alive(self) -> bool: ...

    def exit_reason(self) -> str:
        """Once it is not alive: why it ended without recording a result."""
        ...

    def kill(self) -> None: ...

    def stop(self, timeout: float) -> None:
        """Ask it to stop, and kill it if it has not after `timeout` seconds."""
        ...


Launcher = Callable[[str, WorkerSettings], Worker]  # (job id, its settings) -> its worker


class ProcessWorker:
    """A worker process of this machine."""

    def __init__(self, proc: BaseProcess) -> None:
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.is_alive()

    def exit_reason(self) -> str:
        self.proc.join()
        return _exit_reason(self.proc.exitcode)

    def kill(self) -> None:
        self.proc.kill()

    def stop(self, timeout: float) -> None:
        self.proc.terminate()
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class JobManager:
    """Runs queued jobs, at most `training_concurrency` at a time, each in its own process.

    `db` and `launcher` default to this machine's: the SQLite file and worker processes. With
    `dispatch=False` another manager runs the queue (a cluster's): this one only submits, reads
    and cancels.
    """

    def __init__(self, settings: Settings, store: Store,
                 on_stored: Callable[[str, int], object], base: BaseModelInfo | None = None,
                 db: JobRecords | None = None, launcher: Launcher | None = None,
                 dispatch: bool = True) -> None:
        self.settings = settings
        self.base = base  # the served base: a config it cannot run is refused at submit
        self._worker_settings = WorkerSettings.of(settings)  # all a worker gets: no secrets
        self.store = store
        self.db: JobRecords = db if db is not None else JobDB(settings.jobs_db_path)
        self._on_stored = on_stored
        self._launcher = launcher or self._launch_process
        self._dispatch = dispatch
        self._procs: dict[str, Worker] = {}
        self._cancel_seen: dict[str, float] = {}
        self._ctx = multiprocessing.get_context("spawn")
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        # A tick runs in a thread that cancelling the dispatcher does not stop: stop() takes this
        # lock so that a worker launched by an in-flight tick is still stopped and requeued.
        self._tick_lock = threading.Lock()

    # ------------------------------------------------------------------------------- API
    def submit(self, req: TrainRequest) -> Job:
        """Check the name, and the data as the worker will (so bad input is a 4xx now), then
        queue it."""
        validate_name(req.name)
        problem = None if self.base is None else self.base.unsupported(req.config.adapter_config())
        if problem is not None:
            raise InvalidInputError(f"config: {problem}")
        s = self.settings
        data = prepare(req.task_type, req.train, req.validation, req.labels,
                       req.config.validation_fraction, req.config.seed, s.max_train_rows,
                       s.max_text_chars)
        if req.config.search is not None:
            search_split(data, req.config)  # too few rows for a search: a 422 now as well
        spec = {"labels": data.labels or None,
                "config": req.config.model_dump(exclude_unset=True),
                "description": req.description, "train_rows": len(req.train),
                "validation_rows": len(req.validation or [])}
        job = self.db.create(req.name, req.task_type, spec,
                             {"train": req.train, "validation": req.validation},
                             s.max_queued_jobs)
        self._wakeup.set()
        log.info("queued training job %s for adapter %s", job.id, req.name)
        return job

    def get(self, job_id: str) -> Job:
        """The job; once it has succeeded, its adapter is served before anyone hears so."""
        job = self.db.get(job_id)
        self._announce(job)
        return job

    def list(self, status: str | None = None, limit: int = 100) -> list[Job]:
        jobs = self.db.list(status, limit)
        for job in jobs:
            self._announce(job)
        return jobs

    @property
    def dispatching(self) -> bool:
        """The task that starts queued jobs is alive (elsewhere: assumed, it restarts)."""
        return not self._dispatch or (self._task is not None and not self._task.done())

    def workers_alive(self) -> int:
        return sum(p.alive() for p in list(self._procs.values()))

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return self.db.counts()

    def running(self) -> tuple[Job, ...]:
        """The jobs a worker process is training now."""
        return tuple(self.db.list(RUNNING))

    def _announce(self, job: Job) -> None:
        if job.status == SUCCEEDED and job.adapter_version is not None:
            self._on_stored(job.name, job.adapter_version)

    def cancel(self, job_id: str) -> Job:
        job = self.db.request_cancel(job_id)
        self.wake()
        return job

    def wake(self) -> None:
        """Act now on a queued job or a cancel (made here, or by another process's call)."""
        self._wakeup.set()

    # -------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if not self._dispatch:
            return
        for job in self.db.list(RUNNING, limit=1_000_000):  # the previous process died
            self._settle(job, SERVICE_DIED)
        self._task = asyncio.create_task(self._run(), name="job-dispatch")

    async def stop(self) -> None:
        """Stop workers; their jobs go back to the queue and run again after a restart."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._tick_lock.acquire)
        try:
            await self._stop_workers()
        finally:
            self._tick_lock.release()

    async def _stop_workers(self) -> None:
        for job_id, proc in list(self._procs.items()):
            await asyncio.to_thread(proc.stop, 10)
            self._settle(self.db.get(job_id), None)
        self._procs.clear()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._tick)
            except Exception:  # a bad moment on disk must not stop the queue
                log.exception("job dispatch failed")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), DISPATCH_INTERVAL_S if self._procs
                                       else IDLE_DISPATCH_INTERVAL_S)

    def _tick(self) -> None:
        with self._tick_lock:
            self._reap()
            self._enforce_cancels()
            while len(self._procs) < self.settings.training_concurrency:
                job = self.db.claim_next()
                if job is None:
                    break
                self._launch(job)

    def _launch(self, job: Job) -> None:
        self._procs[job.id] = self._launcher(job.id, self._worker_settings)

    def _launch_process(self, job_id: str, settings: WorkerSettings) -> Worker:
        proc = self._ctx.Process(
            target=run_job, name=f"train-{job_id[:8]}", daemon=True,
            args=(job_id, settings, os.getpid()))
        proc.start()
        log.info("job %s started in worker pid %s", job_id, proc.pid)
        return ProcessWorker(proc)

    def _reap(self) -> None:
        for job_id, proc in list(self._procs.items()):
            if proc.alive():
                continue
            reason = proc.exit_reason()
            del self._procs[job_id]
            self._cancel_seen.pop(job_id, None)
            self._settle(self.db.get(job_id), reason)
            job = self.db.get(job_id)
            self._announce(job)
            log.info("job %s ended: %s", job_id, job.status)

    def _settle(self, job: Job, failure: str | None) -> None:
        """Record how a job ended whose worker is gone while the job still says running.

        The worker may have died between storing its adapter and saying so: then the job
        succeeded. Otherwise a requested cancel wins, else the job fails with `failure`, or goes
        back to the queue when `failure` is None (a graceful shutdown). A temporary directory the
        worker was writing when it died is removed.
        """
        if job.status != RUNNING:
            return
        self.store.clean_stale()
        stored = self._stored_by(job)
        if stored is not None:
            self.db.finish(job.id, SUCCEEDED, adapter_version=stored.version,
                           result=job_result(stored))
        elif job.cancel_requested:
            self.db.finish(job.id, CANCELLED, error=CANCELLED_ERROR)
        elif failure is None:
            self.db.requeue(job.id)
        else:
            self.db.finish(job.id, FAILED, error=failure)
        log.warning("job %s lost its worker (%s): now %s", job.id, failure or "shutdown",
                    self.db.get(job.id).status)

    def _stored_by(self, job: Job) -> AdapterMetadata | None:
        """The version this job stored, found by the job id recorded with it (see run_job)."""
        for version in reversed(self.store.versions(job.name)):
            try:
                meta = self.store.metadata(job.name, version)
            except ServiceError:
                continue
            if meta.metrics.get("job_id") == job.id:
                return meta
        return None

    def _enforce_cancels(self) -> None:
        now = time.monotonic()
        for job_id, proc in self._procs.items():
            if not self.db.get(job_id).cancel_requested:
                continue
            first = self._cancel_seen.setdefault(job_id, now)
            if now - first > self.settings.cancel_grace_seconds and proc.alive():
                log.warning("job %s did not stop after cancel: killing its worker", job_id)
                proc.kill()

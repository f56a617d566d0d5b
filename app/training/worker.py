"""The training worker: one process per job, so a crash or OOM in training never reaches the API."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from app.adapters.backends import open_store
from app.adapters.format import AdapterMetadata, join, new_metadata
from app.adapters.storage import Store
from app.config import Settings
from app.errors import ServiceError
from app.logs import configure_logging
from app.model.encoder import FrozenEncoder
from app.tasks.base import TrainingData
from app.training.config import TrainConfig
from app.training.curve import LossCurve
from app.training.data import prepare
from app.training.jobs import CANCELLED, FAILED, SUCCEEDED, JobDB, JobRecords
from app.training.loop import Progress, TrainingCancelled, TrainResult, train_adapter
from app.training.search import search_and_train, search_summary

log = logging.getLogger(__name__)
REPORT_EVERY_S = 0.5
CANCELLED_ERROR = "cancelled on request; nothing was stored"


def train_and_store(encoder: FrozenEncoder, store: Store, name: str, data: TrainingData,
                    config: TrainConfig, description: str = "",
                    before_save: Callable[[], None] | None = None, job_id: str | None = None,
                    on_search: Callable[[dict[str, Any]], None] | None = None,
                    **callbacks: Any) -> tuple[AdapterMetadata, TrainResult]:
    """Train (or, with config.search, search and then train), then store the best epoch as a
    new version of `name` (used by worker and CLI).

    `job_id` is recorded with the version, so a job whose worker died right after storing it
    is still found to have succeeded. A search cancelled with keep_best_on_cancel stores its
    best finished trial although a cancel was asked for (`before_save` is not asked).
    """
    config = config.resolved(data.task_type)
    extra: dict[str, Any] = {}
    validation_examples = len(data.validation)
    if config.search is not None:
        found = search_and_train(encoder, data, config, on_search=on_search, **callbacks)
        result, config, extra["search"] = found.result, found.config, found.record
        validation_examples = found.validation_examples or validation_examples
        if found.kept_on_cancel:
            before_save = None
    else:
        result = train_adapter(encoder, data, config, **callbacks)
    metrics = {"validation": result.best_metrics, "best_epoch": result.best_epoch,
               "history": result.history, "stop_reason": result.stop_reason,
               "train_examples": len(data.train), "validation_examples": validation_examples,
               "validation_source": "given" if data.validation_given else "split of train",
               "train_seconds": round(result.train_seconds, 2),
               "train_examples_per_second": round(result.examples_per_second, 1),
               "config": config.model_dump(), **extra, **({"job_id": job_id} if job_id else {})}
    meta = new_metadata(name, result.head.config, result.adapter.config, encoder.info, metrics,
                        description)
    if before_save is not None:
        before_save()
    stored = store.save(meta, join(result.adapter.state_dict(), result.head.state_dict()))
    return stored, result


def job_result(stored: AdapterMetadata) -> dict[str, Any]:
    """What a succeeded job reports, read from the training record stored with its adapter."""
    m = stored.metrics
    return {"best_epoch": m["best_epoch"], "metrics": m["validation"],
            "stop_reason": m["stop_reason"], "train_seconds": m["train_seconds"],
            "train_examples_per_second": m["train_examples_per_second"],
            **({"search": search_summary(m["search"])} if "search" in m else {})}


class _Throttle:
    """Call at most every `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the API process dies, so no orphan keeps training."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class WorkerSettings:
    """The part of Settings a training worker uses, and nothing else: no API key or key file
    travels into the worker process (its arguments are pickled to it). Each field is named
    like the Settings attribute it is copied from."""

    log_level: str
    """Python logging level."""
    log_format: Literal["json", "text"]
    """One JSON object per log line, or plain text."""
    train_nice: int
    """Scheduling niceness of the worker."""
    train_threads: int
    """torch threads; 0 = all cores."""
    jobs_db_path: Path
    """SQLite file of training jobs (resolved: never None)."""
    max_train_rows: int
    """Rows (train + validation) in one job."""
    max_text_chars: int
    """Characters in one text (or text pair member)."""
    base_model: str
    """Local directory or hub id of the encoder; empty: the embedded MiniLM."""
    device: str
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    max_seq_length: int
    """Tokens per input after tokenization."""
    adapters_dir: str
    """The adapter store the trained version is saved to (a directory or a URL)."""
    adapter_cache_path: Path
    """With an object store: this node's files of it (resolved: never None)."""

    @classmethod
    def of(cls, settings: Settings) -> WorkerSettings:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def run_job(job_id: str, settings: WorkerSettings, parent_pid: int) -> None:
    """Process entry point: train one claimed job and record how it ended."""
    _die_with_parent()
    # A session of its own: Ctrl+C in a terminal, or a signal to the server's process group,
    # reaches only the API process, which then stops this worker and re-queues its job.
    with contextlib.suppress(OSError):
        os.setsid()
    configure_logging(settings.log_level, settings.log_format, job_id=job_id)
    os.nice(settings.train_nice)
    torch.set_num_threads(settings.train_threads or os.cpu_count() or 1)
    execute_job(job_id, settings, JobDB(settings.jobs_db_path),
                parent_alive=lambda: os.getppid() == parent_pid)


def execute_job(job_id: str, settings: WorkerSettings, db: JobRecords,
                parent_alive: Callable[[], bool]) -> None:
    """Train one claimed job, reporting to `db`, and record how it ended; `parent_alive` says
    whether whoever dispatched it still waits for it (else the job stops, storing nothing)."""
    db.set_worker(job_id, os.getpid())
    progress, cancel = _Throttle(REPORT_EVERY_S), _Throttle(REPORT_EVERY_S)
    curve = LossCurve()

    def on_progress(p: Progress) -> None:
        curve.add(p.step, p.loss)
        if progress.ready() or p.step == p.total_steps:
            db.report_progress(job_id, {
                "epoch": p.epoch, "epochs": p.epochs, "step": p.step,
                "total_steps": p.total_steps, "fraction": round(p.fraction, 4),
                "eta_seconds": None if p.eta_seconds is None else round(p.eta_seconds, 1),
                "train_loss": round(p.loss, 5), "elapsed_seconds": round(p.elapsed, 1)},
                curve.points())

    def should_stop() -> bool:
        if not parent_alive():
            return True
        return cancel.ready() and db.cancel_requested(job_id)

    def before_save() -> None:
        if not parent_alive() or db.cancel_requested(job_id):
            raise TrainingCancelled()

    try:
        job = db.get(job_id)
        payload = db.payload(job_id)
        config = TrainConfig(**job.spec.get("config", {}))
        data = prepare(job.task_type, payload["train"], payload.get("validation"),
                       job.spec.get("labels"), config.validation_fraction, config.seed,
                       settings.max_train_rows, settings.max_text_chars)
        # Training always runs in float32; the served dtype may be half precision.
        encoder = FrozenEncoder.load(settings.base_model, settings.device, "float32",
                                     settings.max_seq_length)
        store = open_store(settings.adapters_dir, settings.adapter_cache_path)
        stored, _ = train_and_store(
            encoder, store, job.name, data, config,
            job.spec.get("description", ""), before_save, job_id, on_progress=on_progress,
            on_epoch=lambda r: db.report_epoch(job_id, r, curve.points()), should_stop=should_stop,
            on_search=lambda table: db.report_search(job_id, table))
        db.finish(job_id, SUCCEEDED, adapter_version=stored.version, result=job_result(stored))
    except TrainingCancelled:
        db.finish(job_id, CANCELLED, error=CANCELLED_ERROR)
    except ServiceError as exc:
        db.finish(job_id, FAILED, error=exc.message)
    except Exception as exc:  # anything else: recorded with its type, and logged in full
        log.exception("training job %s failed", job_id)
        db.finish(job_id, FAILED, error=f"{type(exc).__name__}: {exc}")

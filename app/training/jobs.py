"""Training jobs on disk (SQLite): their state, progress, history and input data.

Shared by the API process (submits, cancels, reads) and the worker processes (claim, report,
finish). WAL mode lets a worker write progress while the API reads it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from app.errors import JobNotFoundError, JobQueueFullError, NameInTrainingError, StoreWriteError

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
QUEUED: Final = "queued"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
Curve = list[list[float]]  # [step, loss] pairs
# SQLite errors (extended names start with these) that mean the disk refused a write.
DISK_ERRORS = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    task_type TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    spec TEXT NOT NULL,              -- labels, config, description, row counts (JSON)
    progress TEXT,                   -- latest Progress (JSON)
    history TEXT NOT NULL DEFAULT '[]',  -- validation metrics per epoch (JSON list)
    loss_curve TEXT NOT NULL DEFAULT '[]',  -- [step, train loss] pairs (JSON list, bounded)
    search TEXT,                     -- a search's trials table, while it runs (JSON)
    result TEXT,                     -- best epoch, metrics, stop reason (JSON)
    adapter_version INTEGER,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
CREATE TABLE IF NOT EXISTS job_data (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    payload BLOB NOT NULL            -- zlib-compressed JSON: train and validation rows
);
"""


@dataclass
class Job:
    id: str
    name: str
    task_type: str
    status: JobStatus
    created_at: float
    spec: dict[str, Any]
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_curve: list[list[float]] = field(default_factory=list)
    search: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    adapter_version: int | None = None
    error: str | None = None
    cancel_requested: bool = False
    worker_pid: int | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        for key in ("spec", "progress", "history", "loss_curve", "search", "result"):
            d[key] = json.loads(d[key]) if d[key] is not None else None
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**d)


class JobRecords(Protocol):
    """What the job queue and its workers ask of the job records: a JobDB here, or on a
    cluster the one JobDB every replica and worker reaches through Ray (app.cluster.jobs)."""

    def create(self, name: str, task_type: str, spec: dict[str, Any], payload: dict[str, Any],
               max_queued: int) -> Job: ...
    def get(self, job_id: str) -> Job: ...
    def list(self, status: str | None = None, limit: int = 100) -> list[Job]: ...
    def counts(self) -> dict[str, int]: ...
    def claim_next(self) -> Job | None: ...
    def request_cancel(self, job_id: str) -> Job: ...
    def requeue(self, job_id: str) -> None: ...
    def payload(self, job_id: str) -> dict[str, Any]: ...
    def set_worker(self, job_id: str, pid: int) -> None: ...
    def report_progress(self, job_id: str, progress: dict[str, Any],
                        loss_curve: Curve) -> None: ...
    def report_epoch(self, job_id: str, record: dict[str, Any], loss_curve: Curve) -> None: ...
    def report_search(self, job_id: str, search: dict[str, Any]) -> None: ...
    def cancel_requested(self, job_id: str) -> bool: ...
    def finish(self, job_id: str, status: JobStatus, error: str | None = None,
               adapter_version: int | None = None, result: dict[str, Any] | None = None
               ) -> bool: ...


class JobDB:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            _add_missing_columns(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                db.execute("PRAGMA foreign_keys=ON")
                yield db
            finally:
                db.close()
        except sqlite3.OperationalError as exc:
            if not getattr(exc, "sqlite_errorname", "").startswith(DISK_ERRORS):
                raise
            raise StoreWriteError(f"cannot write the training job database: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # a full disk has rolled it back already
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------------- API process
    def create(self, name: str, task_type: str, spec: dict[str, Any], payload: dict[str, Any],
               max_queued: int) -> Job:
        """Queue a job, unless that name is already being trained or the queue is full."""
        job = Job(uuid.uuid4().hex, name, task_type, QUEUED, time.time(), spec)
        blob = zlib.compress(json.dumps(payload).encode(), 3)
        with self._transaction() as db:
            busy = db.execute("SELECT id FROM jobs WHERE name = ? AND status IN (?, ?)",
                              (name, *ACTIVE)).fetchone()
            if busy:
                raise NameInTrainingError(
                    f"adapter {name!r} is already being trained by job {busy['id']}; wait for it "
                    f"or cancel it (DELETE /jobs/{busy['id']})", job_id=busy["id"])
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?",
                                   (QUEUED,)).fetchone()
            if queued >= max_queued:
                raise JobQueueFullError(f"{queued} training jobs are waiting (limit {max_queued}); "
                                        f"retry when some have finished")
            db.execute("INSERT INTO jobs (id, name, task_type, status, created_at, spec) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (job.id, name, task_type, QUEUED, job.created_at, json.dumps(spec)))
            db.execute("INSERT INTO job_data (job_id, payload) VALUES (?, ?)", (job.id, blob))
        return job

    def get(self, job_id: str) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no training job {job_id!r}; GET /jobs lists them")
        return Job.from_row(row)

    def list(self, status: str | None = None, limit: int = 100) -> list[Job]:
        query, args = "SELECT * FROM jobs", []
        if status:
            query, args = query + " WHERE status = ?", [status]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
            return [Job.from_row(r) for r in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        with self._connect() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked running (None when the queue is empty)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = ? ORDER BY created_at LIMIT 1",
                             (QUEUED,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = ?, started_at = ?, progress = NULL, "
                       "history = '[]', loss_curve = '[]', search = NULL WHERE id = ?",
                       (RUNNING, time.time(), row["id"]))
        return self.get(row["id"])

    def request_cancel(self, job_id: str) -> Job:
        """Queued jobs are cancelled at once; running ones are told to stop."""
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
                             (CANCELLED, time.time(), job_id, QUEUED))
            if cur.rowcount:
                db.execute("DELETE FROM job_data WHERE job_id = ?", (job_id,))
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?",
                       (job_id, RUNNING))
        return self.get(job_id)

    def requeue(self, job_id: str) -> None:
        """A graceful shutdown interrupted this job: it runs again from the start later."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET status = ?, started_at = NULL, progress = NULL, "
                       "history = '[]', loss_curve = '[]', search = NULL, worker_pid = NULL "
                       "WHERE id = ? AND status = ?",
                       (QUEUED, job_id, RUNNING))

    # ----------------------------------------------------------------------- worker process
    def payload(self, job_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT payload FROM job_data WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"training data of job {job_id} is gone")
        payload: dict[str, Any] = json.loads(zlib.decompress(row["payload"]))
        return payload

    def set_worker(self, job_id: str, pid: int) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET worker_pid = ? WHERE id = ?", (pid, job_id))

    def report_progress(self, job_id: str, progress: dict[str, Any],
                        loss_curve: Curve) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET progress = ?, loss_curve = ? WHERE id = ?",
                       (json.dumps(progress), json.dumps(loss_curve), job_id))

    def report_epoch(self, job_id: str, record: dict[str, Any],
                     loss_curve: Curve) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET history = json_insert(history, '$[#]', json(?)), "
                       "loss_curve = ? WHERE id = ?",
                       (json.dumps(record), json.dumps(loss_curve), job_id))

    def report_search(self, job_id: str, search: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET search = ? WHERE id = ?", (json.dumps(search), job_id))

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested, status FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
        return row is None or bool(row["cancel_requested"]) or row["status"] != RUNNING

    def finish(self, job_id: str, status: JobStatus, error: str | None = None,
               adapter_version: int | None = None, result: dict[str, Any] | None = None) -> bool:
        """Move a running job to a terminal state; False if it was not running any more."""
        assert status in TERMINAL
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, error = ?, adapter_version = ?, result = ?, "
                "finished_at = ? WHERE id = ? AND status = ?",
                (status, error, adapter_version, json.dumps(result) if result else None,
                 time.time(), job_id, RUNNING))
            if cur.rowcount:
                db.execute("DELETE FROM job_data WHERE job_id = ?", (job_id,))
        return bool(cur.rowcount)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A database made by an older release lacks the columns added since: add them (SQLite
    fills existing rows with the column's default)."""
    have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    if "loss_curve" not in have:
        db.execute("ALTER TABLE jobs ADD COLUMN loss_curve TEXT NOT NULL DEFAULT '[]'")
    if "search" not in have:
        db.execute("ALTER TABLE jobs ADD COLUMN search TEXT")

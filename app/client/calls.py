"""The client without I/O: each API call as a request to send and a parser of its answer, and
the reader of a job's event stream. Client and AsyncClient only send what these build."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel

from app.client.errors import JobFailed, error_from
from app.client.progress import ProgressDisplay
from app.schemas.adapters import AdapterDetail, AdapterList, DeleteResult
from app.schemas.common import Health, Readiness, TaskTypeList, WhoAmI
from app.schemas.jobs import JobList, JobView
from app.schemas.predict import PredictResponse
from app.training.config import TrainConfig
from app.training.jobs import JobStatus

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Format = Literal["adapter-serve", "peft", "adapterhub"]

Input = str | Mapping[str, Any] | BaseModel
Inputs = Input | Sequence[Input]
TERMINAL = ("succeeded", "failed", "cancelled")
# The server sends a comment every 15 s on a quiet stream; a read waits a few of them.
STREAM_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and what its answer means."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    accept: tuple[int, ...] = ()  # statuses besides 2xx whose body is an answer, not an error

    def request(self) -> dict[str, Any]:
        """Keyword arguments of httpx's `request()` / `build_request()`."""
        params = {k: v for k, v in self.params.items() if v is not None}
        return {"method": self.method, "url": self.path, "params": params, "json": self.json,
                "content": self.content, "data": self.data, "files": self.files,
                "headers": self.headers}

    def answer(self, response: httpx.Response) -> T:
        if not response.is_success and response.status_code not in self.accept:
            raise error_from(response)
        return self.parse(response)


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda r: cls.model_validate_json(r.content)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- the calls
def predict(task: str, inputs: Inputs, version: int | None, options: dict[str, Any]
            ) -> Call[PredictResponse]:
    body = {"inputs": _jsonable(inputs), **({"version": version} if version else {}), **options}
    return Call("POST", f"/predict/{task}", _model(PredictResponse), json=body)


def train(name: str, task_type: str, rows: Sequence[Any] | None, path: str | Path | None,
          validation: Sequence[Any] | str | Path | None, labels: Sequence[str] | None,
          config: TrainConfig | Mapping[str, Any] | None, description: str) -> Call[JobView]:
    """Rows as JSON, or a JSONL/CSV file (and a validation file) as a multipart upload."""
    if (rows is None) == (path is None):
        raise ValueError("train() needs either rows or path, not both")
    conf = (config.model_dump(exclude_unset=True) if isinstance(config, TrainConfig)
            else dict(config or {}))
    if rows is not None:
        if isinstance(validation, str | Path):
            raise ValueError("with rows, validation is rows too (a file goes with path=)")
        body = {"name": name, "task_type": task_type, "train": _jsonable(rows),
                "validation": _jsonable(validation), "labels": labels, "config": conf,
                "description": description}
        return Call("POST", "/adapters", _model(JobView),
                    json={k: v for k, v in body.items() if v is not None})
    assert path is not None
    if validation is not None and not isinstance(validation, str | Path):
        raise ValueError("with path=, validation is a file path too")
    files = {"file": _file(path)} | ({"validation_file": _file(validation)} if validation else {})
    form = {"name": name, "task_type": task_type, "config": json.dumps(conf),
            "description": description} | ({"labels": json.dumps(list(labels))} if labels else {})
    return Call("POST", "/adapters", _model(JobView), data=form, files=files)


def _file(path: str | Path) -> tuple[str, bytes]:
    p = Path(path)
    return p.name, p.read_bytes()  # the name's suffix tells the server JSONL from CSV


def job(job_id: str) -> Call[JobView]:
    return Call("GET", f"/jobs/{job_id}", _model(JobView))


def jobs(status: JobStatus | None, limit: int) -> Call[list[JobView]]:
    return Call("GET", "/jobs", lambda r: JobList.model_validate_json(r.content).jobs,
                params={"status": status, "limit": limit})


def cancel(job_id: str) -> Call[JobView]:
    return Call("DELETE", f"/jobs/{job_id}", _model(JobView))


def adapters(limit: int, cursor: str | None, prefix: str, contains: str = ""
             ) -> Call[AdapterList]:
    return Call("GET", "/adapters", _model(AdapterList),
                params={"limit": limit, "cursor": cursor, "prefix": prefix or None,
                        "contains": contains or None})


def adapter(name: str, version: int | None) -> Call[AdapterDetail]:
    return Call("GET", f"/adapters/{name}", _model(AdapterDetail), params={"version": version})


def download(name: str, version: int | None, format: Format) -> Call[httpx.Response]:
    return Call("GET", f"/adapters/{name}/download", lambda r: r,
                params={"version": version, "format": format})


def save_download(response: httpx.Response, path: str | Path | None) -> bytes | Path:
    """The bytes, or the file written: `path`, or the server's file name inside a directory."""
    if path is None:
        return response.content
    target = Path(path)
    if target.is_dir():
        disposition = response.headers.get("Content-Disposition", "")
        name = disposition.partition('filename="')[2].rstrip('"') or "adapter.bin"
        target = target / Path(name).name
    target.write_bytes(response.content)
    return target


def import_adapter(name: str, source: str | Path | bytes) -> Call[AdapterDetail]:
    """A weights file or archive as it is; a directory zipped in memory."""
    data = source if isinstance(source, bytes) else _read_source(Path(source))
    kind = ("application/zip" if data[:4] == b"PK\x03\x04"
            else "application/gzip" if data[:2] == b"\x1f\x8b" else "application/octet-stream")
    return Call("PUT", f"/adapters/{name}", _model(AdapterDetail), content=data,
                headers={"Content-Type": kind})


def _read_source(path: Path) -> bytes:
    if not path.is_dir():
        return path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(path).as_posix())
    return buffer.getvalue()


def delete(name: str, version: int | None) -> Call[DeleteResult]:
    return Call("DELETE", f"/adapters/{name}", _model(DeleteResult), params={"version": version})


def health() -> Call[Health]:
    return Call("GET", "/healthz", _model(Health))


def ready() -> Call[Readiness]:
    return Call("GET", "/readyz", _model(Readiness), accept=(503,))


def whoami() -> Call[WhoAmI]:
    return Call("GET", "/whoami", _model(WhoAmI))


def task_types() -> Call[TaskTypeList]:
    return Call("GET", "/task-types", _model(TaskTypeList))


def events(job_id: str) -> Call[None]:
    return Call("GET", f"/jobs/{job_id}/events", lambda r: None,
                headers={"Accept": "text/event-stream"})


# ------------------------------------------------------------------------ following a job
class Follower:
    """Reads a job's event stream line by line: shows its progress, knows when it is over."""

    def __init__(self, show: ProgressDisplay, timeout: float | None) -> None:
        self.show = show
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.last: JobView | None = None
        self.epochs_shown = 0
        self.event = ""
        self.ended = False

    def read_timeout(self) -> float:
        if self.deadline is None:
            return STREAM_READ_TIMEOUT_S
        return max(0.1, min(STREAM_READ_TIMEOUT_S, self.deadline - time.monotonic()))

    def feed(self, line: str) -> None:
        """One line of the stream (`event:`, `data:`, a comment or the blank line after each)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job not over after the timeout; last seen: {self._state()}")
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:") and self.event == "progress":
            self._show(JobView.model_validate_json(line[5:].strip()))
        elif line.startswith("data:") and self.event == "end":
            self.ended = True

    def _show(self, view: JobView) -> None:
        self.last = view
        p = view.progress or {}
        epochs = p.get("epochs") or view.config.get("epochs")
        if "step" in p:
            self.show.step(p["epoch"], p["epochs"], p["step"], p["total_steps"],
                           p.get("train_loss"))
        for record in view.metrics[self.epochs_shown:]:
            self.show.epoch(record, epochs)
        self.epochs_shown = len(view.metrics)

    def _state(self) -> str:
        return "nothing" if self.last is None else f"{self.last.status} {self.last.progress}"

    def result(self) -> JobView:
        """The final job; JobFailed when it failed or was cancelled."""
        assert self.last is not None and self.last.status in TERMINAL, "the stream is not over"
        if self.last.status != "succeeded":
            raise JobFailed(self.last)
        return self.last

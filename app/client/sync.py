"""Client: the API over httpx, blocking. The requests and parsers are in app.client.calls."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import PrivateAttr

import app.client.calls as calls
from app.client.calls import Call, Format, Inputs
from app.client.progress import display
from app.schemas.adapters import AdapterDetail, AdapterList, AdapterSummary, DeleteResult
from app.schemas.common import Health, Readiness, TaskTypeList, WhoAmI
from app.schemas.jobs import JobView
from app.schemas.predict import PredictResponse
from app.training.config import TrainConfig
from app.training.jobs import JobStatus

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 60.0


def http_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """What both clients give httpx: the base URL, the key as a Bearer header, the timeout."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {"base_url": base_url.rstrip("/"), "headers": headers, "timeout": timeout}


class Job(JobView):
    """A training job as the API shows it, which can wait for its end."""

    _client: Client = PrivateAttr()

    @classmethod
    def bound(cls, view: JobView, client: Client) -> Job:
        job = cls.model_construct(**dict(view))
        job._client = client
        return job

    def wait(self, progress: bool = True, timeout: float | None = None) -> Job:
        """Follow the job's events to its end (a tqdm bar when `progress` and stderr is a
        terminal); the final job, or JobFailed with its error."""
        return self._client.wait(self.job_id, progress, timeout)

    def refresh(self) -> Job:
        return self._client.job(self.job_id)

    def cancel(self) -> Job:
        return self._client.cancel(self.job_id)


class Client:
    """`with Client("http://127.0.0.1:8000", api_key=...) as c: c.predict("sentiment", "...")`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(**http_options(base_url, api_key, timeout))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _do(self, call: Call[T]) -> T:
        return call.answer(self.http.request(**call.request()))

    def _job(self, view: JobView) -> Job:
        return Job.bound(view, self)

    def predict(self, task: str, inputs: Inputs, version: int | None = None,
                **options: Any) -> PredictResponse:
        """Options: return_tokens, max_answer_tokens, allow_empty, explain, explain_steps,
        explain_tolerance, explain_label (see POST /predict)."""
        return self._do(calls.predict(task, inputs, version, options))

    def train(self, name: str, task_type: str, rows: Sequence[Any] | None = None, *,
              path: str | Path | None = None, validation: Sequence[Any] | str | Path | None = None,
              labels: Sequence[str] | None = None,
              config: TrainConfig | Mapping[str, Any] | None = None, description: str = "") -> Job:
        """Queue a training job from rows (JSON) or a JSONL/CSV file at `path` (uploaded)."""
        return self._job(self._do(calls.train(name, task_type, rows, path, validation, labels,
                                              config, description)))

    def job(self, job_id: str) -> Job:
        return self._job(self._do(calls.job(job_id)))

    def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        return [self._job(v) for v in self._do(calls.jobs(status, limit))]

    def cancel(self, job_id: str) -> Job:
        return self._job(self._do(calls.cancel(job_id)))

    def wait(self, job_id: str, progress: bool = True, timeout: float | None = None) -> Job:
        """Follow GET /jobs/{id}/events to the end; see Job.wait."""
        show = display(progress, desc=job_id[:8])
        follower = calls.Follower(show, timeout)
        call = calls.events(job_id)
        try:
            while not follower.ended:  # a stream cut short is opened again
                with self.http.stream(**call.request(),
                                      timeout=httpx.Timeout(self.http.timeout.connect,
                                                            read=follower.read_timeout())) as r:
                    if not r.is_success:
                        r.read()
                        call.answer(r)
                    for line in r.iter_lines():
                        follower.feed(line)
        finally:
            show.close()
        return self._job(follower.result())

    def adapters(self, limit: int = 100, cursor: str | None = None, prefix: str = "",
                 contains: str = "") -> AdapterList:
        """One page; pass its `next_cursor` for the next (or use iter_adapters)."""
        return self._do(calls.adapters(limit, cursor, prefix, contains))

    def iter_adapters(self, prefix: str = "", page_size: int = 100) -> Iterator[AdapterSummary]:
        """Every adapter, in name order, a page at a time."""
        cursor: str | None = None
        while True:
            page = self.adapters(page_size, cursor, prefix)
            yield from page.adapters
            if (cursor := page.next_cursor) is None:
                return

    def adapter(self, name: str, version: int | None = None) -> AdapterDetail:
        return self._do(calls.adapter(name, version))

    def download(self, name: str, path: str | Path | None = None, version: int | None = None,
                 format: Format = "adapter-serve") -> bytes | Path:
        """The weights file (or, format=peft|adapterhub, a zip of that library's files): the
        bytes, or the file written at `path` (in it, under the server's name, if a directory)."""
        return calls.save_download(self._do(calls.download(name, version, format)), path)

    def import_adapter(self, name: str, source: str | Path | bytes) -> AdapterDetail:
        """A .safetensors file, a .zip/.tar.gz, or a directory saved by AdapterHub or PEFT."""
        return self._do(calls.import_adapter(name, source))

    def delete(self, name: str, version: int | None = None) -> DeleteResult:
        return self._do(calls.delete(name, version))

    def health(self) -> Health:
        return self._do(calls.health())

    def whoami(self) -> WhoAmI:
        """Whether the server wants keys, and the scope of this client's key."""
        return self._do(calls.whoami())

    def task_types(self) -> TaskTypeList:
        """The task types, each with the training config a job gets by default."""
        return self._do(calls.task_types())

    def ready(self) -> Readiness:
        """Readiness, ready or not (a 503 answer is a Readiness with its problems)."""
        return self._do(calls.ready())

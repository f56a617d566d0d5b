"""AsyncClient: Client's methods as coroutines, over the same requests and parsers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import PrivateAttr

import app.client.calls as calls
from app.client.calls import Call, Format, Inputs
from app.client.progress import display
from app.client.sync import DEFAULT_TIMEOUT_S, http_options
from app.schemas.adapters import AdapterDetail, AdapterList, AdapterSummary, DeleteResult
from app.schemas.common import Health, Readiness, TaskTypeList, WhoAmI
from app.schemas.jobs import JobView
from app.schemas.predict import PredictResponse
from app.training.config import TrainConfig
from app.training.jobs import JobStatus

T = TypeVar("T")


class AsyncJob(JobView):
    """A training job as the API shows it, which can wait for its end."""

    _client: AsyncClient = PrivateAttr()

    @classmethod
    def bound(cls, view: JobView, client: AsyncClient) -> AsyncJob:
        job = cls.model_construct(**dict(view))
        job._client = client
        return job

    async def wait(self, progress: bool = True, timeout: float | None = None) -> AsyncJob:
        return await self._client.wait(self.job_id, progress, timeout)

    async def refresh(self) -> AsyncJob:
        return await self._client.job(self.job_id)

    async def cancel(self) -> AsyncJob:
        return await self._client.cancel(self.job_id)


class AsyncClient:
    """`async with AsyncClient(url) as c: await c.predict("sentiment", "...")`; see Client."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, http: httpx.AsyncClient | None = None
                 ) -> None:
        self.http = http or httpx.AsyncClient(**http_options(base_url, api_key, timeout))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _do(self, call: Call[T]) -> T:
        return call.answer(await self.http.request(**call.request()))

    def _job(self, view: JobView) -> AsyncJob:
        return AsyncJob.bound(view, self)

    async def predict(self, task: str, inputs: Inputs, version: int | None = None,
                      **options: Any) -> PredictResponse:
        return await self._do(calls.predict(task, inputs, version, options))

    async def train(self, name: str, task_type: str, rows: Sequence[Any] | None = None, *,
                    path: str | Path | None = None,
                    validation: Sequence[Any] | str | Path | None = None,
                    labels: Sequence[str] | None = None,
                    config: TrainConfig | Mapping[str, Any] | None = None,
                    description: str = "") -> AsyncJob:
        return self._job(await self._do(calls.train(name, task_type, rows, path, validation,
                                                    labels, config, description)))

    async def job(self, job_id: str) -> AsyncJob:
        return self._job(await self._do(calls.job(job_id)))

    async def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[AsyncJob]:
        return [self._job(v) for v in await self._do(calls.jobs(status, limit))]

    async def cancel(self, job_id: str) -> AsyncJob:
        return self._job(await self._do(calls.cancel(job_id)))

    async def wait(self, job_id: str, progress: bool = True, timeout: float | None = None
                   ) -> AsyncJob:
        show = display(progress, desc=job_id[:8])
        follower = calls.Follower(show, timeout)
        call = calls.events(job_id)
        try:
            while not follower.ended:
                async with self.http.stream(**call.request(), timeout=httpx.Timeout(
                        self.http.timeout.connect, read=follower.read_timeout())) as r:
                    if not r.is_success:
                        await r.aread()
                        call.answer(r)
                    async for line in r.aiter_lines():
                        follower.feed(line)
        finally:
            show.close()
        return self._job(follower.result())

    async def adapters(self, limit: int = 100, cursor: str | None = None, prefix: str = "",
                       contains: str = "") -> AdapterList:
        return await self._do(calls.adapters(limit, cursor, prefix, contains))

    async def iter_adapters(self, prefix: str = "", page_size: int = 100
                            ) -> AsyncIterator[AdapterSummary]:
        cursor: str | None = None
        while True:
            page = await self.adapters(page_size, cursor, prefix)
            for summary in page.adapters:
                yield summary
            if (cursor := page.next_cursor) is None:
                return

    async def adapter(self, name: str, version: int | None = None) -> AdapterDetail:
        return await self._do(calls.adapter(name, version))

    async def download(self, name: str, path: str | Path | None = None,
                       version: int | None = None, format: Format = "adapter-serve"
                       ) -> bytes | Path:
        return calls.save_download(await self._do(calls.download(name, version, format)), path)

    async def import_adapter(self, name: str, source: str | Path | bytes) -> AdapterDetail:
        return await self._do(calls.import_adapter(name, source))

    async def delete(self, name: str, version: int | None = None) -> DeleteResult:
        return await self._do(calls.delete(name, version))

    async def health(self) -> Health:
        return await self._do(calls.health())

    async def whoami(self) -> WhoAmI:
        """Whether the server wants keys, and the scope of this client's key."""
        return await self._do(calls.whoami())

    async def task_types(self) -> TaskTypeList:
        """The task types, each with the training config a job gets by default."""
        return await self._do(calls.task_types())

    async def ready(self) -> Readiness:
        return await self._do(calls.ready())

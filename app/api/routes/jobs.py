"""/jobs: training job status, list, cancel, and progress as server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.api.auth import AdminScope
from app.api.deps import ServicesDep
from app.api.errors import responses
from app.schemas.jobs import JobList, JobView
from app.training.jobs import TERMINAL

router = APIRouter(prefix="/jobs", tags=["training"], responses=responses(422, 503))
NOT_FOUND = responses(404)
EVENT_POLL_S = 0.5
KEEPALIVE_S = 15.0


@router.get("", response_model=JobList)
def list_jobs(services: ServicesDep,
              status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobList:
    return JobList(jobs=[JobView.of(j) for j in services.jobs.list(status, limit)])


@router.get("/{job_id}", response_model=JobView, responses=NOT_FOUND)
def get_job(job_id: str, services: ServicesDep) -> JobView:
    return JobView.of(services.jobs.get(job_id))


@router.delete("/{job_id}", response_model=JobView, responses=responses(404, 507),
                dependencies=[AdminScope])
def cancel_job(job_id: str, services: ServicesDep) -> JobView:
    """Cancel: a queued job at once, a running one within seconds; nothing is stored."""
    return JobView.of(services.jobs.cancel(job_id))


@router.get("/{job_id}/events", responses={**NOT_FOUND, 200: {
    "content": {"text/event-stream": {}}, "description": "`progress` events, then `end`."}})
async def job_events(job_id: str, request: Request, services: ServicesDep) -> StreamingResponse:
    """Server-sent events: the job as JSON whenever it changes, `end` when it is over."""
    jobs = services.jobs
    first = await asyncio.to_thread(jobs.get, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        job, last, quiet = first, "", 0.0
        while True:
            view = JobView.of(job).model_dump_json()
            if view != last:
                yield f"event: progress\ndata: {view}\n\n"
                last, quiet = view, 0.0
            if job.status in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
                return
            if quiet >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet = 0.0
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)
            quiet += EVENT_POLL_S
            job = await asyncio.to_thread(jobs.get, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

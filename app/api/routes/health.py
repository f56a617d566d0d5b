"""Liveness, readiness and metrics: what probes and operators read."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.api.auth import Credentials, Scope, check_key
from app.api.deps import ServicesDep
from app.schemas.common import ErrorResponse, Health, Readiness, TrainingState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request) -> JSONResponse:
    """Ready when the base model is loaded, the store readable and the workers alive."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        body = Readiness(status="starting", problems=["base model not loaded"])
        return JSONResponse(body.model_dump(), status_code=503)
    problems = []
    try:
        services.store.check_readable()
    except OSError as exc:
        problems.append(f"adapter store not readable: {exc}")
    if not services.batcher.running:
        problems.append("the batching worker has stopped")
    if not services.jobs.dispatching:
        problems.append("the training job dispatcher has stopped")
    counts = services.jobs.db.counts()
    body = Readiness(
        status="ready" if not problems else "degraded",
        base_model=services.encoder.info.name, device=str(services.encoder.device),
        adapters=len(services.registry.names()),
        resident_adapters=len(services.registry.resident_keys()),
        queue_rows=services.batcher.queued_rows,
        training=TrainingState(workers=services.jobs.workers_alive(),
                               running=counts.get("running", 0), queued=counts.get("queued", 0)),
        problems=problems,
    )
    return JSONResponse(body.model_dump(), status_code=200 if not problems else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
def prometheus_metrics(request: Request, services: ServicesDep, credentials: Credentials
                       ) -> Response:
    """Prometheus metrics; needs a key only when METRICS_AUTH is on (and keys are set)."""
    if services.settings.metrics_auth:
        check_key(request, credentials, Scope.PREDICT)
    return Response(metrics.render(services), media_type=CONTENT_TYPE_LATEST)

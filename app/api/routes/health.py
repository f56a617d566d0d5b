"""Liveness, readiness and metrics: what probes and operators read."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.api.auth import Credentials, Scope, check_key
from app.api.deps import ServicesDep
from app.schemas.common import ErrorResponse, Health, Readiness

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
    report = services.readiness()
    body = Readiness.of(report)
    return JSONResponse(body.model_dump(), status_code=200 if report.ready else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
def prometheus_metrics(request: Request, services: ServicesDep, credentials: Credentials
                       ) -> Response:
    """Prometheus metrics; needs a key only when METRICS_AUTH is on (and keys are set)."""
    if services.settings.metrics_auth:
        check_key(request, credentials, Scope.PREDICT)
    return Response(metrics.render(services.status), media_type=CONTENT_TYPE_LATEST)

"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.schemas.common import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request) -> JSONResponse:
    """Ready when the base model is loaded and the adapter store can be read."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        body = Readiness(status="starting", problems=["base model not loaded"])
        return JSONResponse(body.model_dump(), status_code=503)
    problems = []
    try:
        services.store.check_readable()
    except OSError as exc:
        problems.append(f"adapter store not readable: {exc}")
    body = Readiness(
        status="ready" if not problems else "degraded",
        base_model=services.encoder.info.name, device=str(services.encoder.device),
        adapters=len(services.registry.names()),
        resident_adapters=len(services.registry.resident_keys()), problems=problems,
    )
    return JSONResponse(body.model_dump(), status_code=200 if not problems else 503)

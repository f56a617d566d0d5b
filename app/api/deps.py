"""Shared objects reached by routes through Depends aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ServiceError
from app.services import Services


class NotReadyError(ServiceError):
    status_code = 503
    code = "not_ready"


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReadyError("the service is starting: the base model is not loaded yet")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

"""What a client asks about the service itself: its key's scope, the task types and their defaults."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.auth import Credentials, KeyRing, Scope, check_key
from app.api.errors import responses
from app.schemas.common import TaskTypeInfo, TaskTypeList, WhoAmI
from app.tasks import TASK_TYPES
from app.training.config import TrainConfig

router = APIRouter(tags=["meta"])


@router.get("/whoami", response_model=WhoAmI, responses=responses(401, 503))
def whoami(request: Request, credentials: Credentials) -> WhoAmI:
    """Whether keys are required and the scope of the key sent (the console asks this to show
    only what its key may do). Without a key it answers too, with `scope` null when one is
    needed; a key that is not valid is a 401."""
    keys: KeyRing | None = getattr(request.app.state, "keys", None)
    if keys is not None and keys.enabled and credentials is None:
        return WhoAmI(keys_required=True, scope=None)
    check_key(request, credentials, Scope.PREDICT)  # 401 for a key that is not valid
    assert keys is not None  # check_key answered 503 otherwise
    scope = keys.scope_of(credentials.credentials) if keys.enabled and credentials else Scope.ADMIN
    return WhoAmI(keys_required=keys.enabled, scope=scope.value if scope else None)


@router.get("/task-types", response_model=TaskTypeList)
def task_types() -> TaskTypeList:
    """Every task type, with the training config it gets when a request leaves fields out."""
    return TaskTypeList(task_types=[
        TaskTypeInfo(name=t, training_defaults=TrainConfig().resolved(t).model_dump())
        for t in TASK_TYPES])

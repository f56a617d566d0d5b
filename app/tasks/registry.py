"""The task types, named once, and the one place that finds a type's module."""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Literal, get_args

from app.errors import InvalidInputError

if TYPE_CHECKING:
    from app.tasks.base import Task

# Each name is also the module that implements it: app/tasks/<name>.py, exporting TASK.
TaskType = Literal["classification", "regression", "token_classification", "question_answering"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)


@cache
def get_task(task_type: str) -> Task:
    """The task module's Task object (imported on first use, so the modules may import the
    base without a circle through this registry)."""
    if task_type not in TASK_TYPES:
        raise InvalidInputError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
    task: Task = importlib.import_module(f"app.tasks.{task_type}").TASK
    if task.name != task_type:
        raise RuntimeError(f"app.tasks.{task_type} declares task {task.name!r}")
    return task

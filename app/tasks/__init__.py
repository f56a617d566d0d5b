"""Task types as modules: one file per type (app/tasks/<type>.py), found through the registry."""

import importlib
from functools import cache

from app.errors import InvalidInputError
from app.tasks.base import DecodeOptions, Head, HeadConfig, Prediction, Task, TextInput
from app.tasks.registry import TASK_TYPES, TaskType


@cache
def get_task(task_type: str) -> Task:
    """The Task of a type: its module's TASK. Modules load on first use, so each may import
    this package's base without a circle."""
    if task_type not in TASK_TYPES:
        raise InvalidInputError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
    task = importlib.import_module(f"app.tasks.{task_type}").TASK
    if not isinstance(task, Task) or task.name != task_type:
        raise RuntimeError(f"app.tasks.{task_type}.TASK must be the Task named {task_type!r}")
    return task


def build_head(config: HeadConfig, hidden_size: int) -> Head:
    """A fresh head for `config` (its task type's head class)."""
    return get_task(config.task_type).build_head(config, hidden_size)


__all__ = ["TASK_TYPES", "DecodeOptions", "Head", "HeadConfig", "Prediction", "Task", "TaskType",
           "TextInput", "build_head", "get_task"]

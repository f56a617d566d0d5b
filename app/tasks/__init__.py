"""Task types as modules: one file per type (app/tasks/<type>.py), found through the registry."""

from app.tasks.base import DecodeOptions, Head, HeadConfig, Prediction, Task, TextInput
from app.tasks.registry import TASK_TYPES, TaskType, get_task


def build_head(config: HeadConfig, hidden_size: int) -> Head:
    """A fresh head for `config` (its task type's head class)."""
    return get_task(config.task_type).build_head(config, hidden_size)


__all__ = ["TASK_TYPES", "DecodeOptions", "Head", "HeadConfig", "Prediction", "Task", "TaskType",
           "TextInput", "build_head", "get_task"]

"""The task types, named once: each name is also its module, app/tasks/<name>.py."""

from __future__ import annotations

from typing import Literal, get_args

TaskType = Literal["classification", "regression", "token_classification", "question_answering",
                   "multi_label_classification"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

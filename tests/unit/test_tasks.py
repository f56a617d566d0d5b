"""Task types are modules behind one registry: every list of types is that registry's list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.cli import build_parser
from app.errors import InvalidInputError
from app.schemas.jobs import TrainRequestBody
from app.tasks import TASK_TYPES, HeadConfig, build_head, get_task
from app.tasks.base import Task

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_each_type_is_its_own_module_with_a_complete_task(task_type: str) -> None:
    task = get_task(task_type)
    assert isinstance(task, Task) and task.name == task_type
    assert type(task).__module__ == f"app.tasks.{task_type}"
    assert task.defaults.epochs >= 1 and task.defaults.learning_rate > 0
    labels = ["O", "B-X"] if task.min_labels else []
    head = build_head(HeadConfig(task_type=task_type, labels=labels), 8)
    assert isinstance(head, task.head_type)


def test_an_unknown_type_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"task_type must be one of \['classification'"):
        get_task("ranking")


def test_every_list_of_task_types_is_the_registry() -> None:
    request = TrainRequestBody.model_json_schema()["properties"]["task_type"]
    assert tuple(request["enum"]) == TASK_TYPES
    head = HeadConfig.model_json_schema()["properties"]["task_type"]
    assert tuple(head["enum"]) == TASK_TYPES
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "task_type")
    assert tuple(train.choices) == TASK_TYPES


def _task_type_comparisons(path: Path) -> list[str]:
    """`x.task_type == "..."`, `task_type in (...)` and the like, as file:line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names = [s.attr if isinstance(s, ast.Attribute) else getattr(s, "id", None) for s in sides]
        constants = [n for s in sides for n in ast.walk(s)
                     if isinstance(n, ast.Constant) and n.value in TASK_TYPES]
        if "task_type" in names and constants:
            found.append(f"{path.relative_to(APP.parent)}:{node.lineno}")
    return found


def test_no_code_outside_the_task_modules_branches_on_a_task_type() -> None:
    outside = [p for p in APP.rglob("*.py") if p.parent.name != "tasks"]
    assert [hit for p in outside for hit in _task_type_comparisons(p)] == []

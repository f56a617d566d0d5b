"""The service hands freed heap memory back to the OS on a schedule (MALLOC_TRIM_SECONDS)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from app import memory
from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.skipif(not memory.can_trim(), reason="needs glibc's malloc_trim")
TRIM_TASK = "malloc-trim"  # the name app.services gives the task


def _task_names(client: TestClient) -> set[str]:
    """The tasks alive on the app's event loop."""

    async def names() -> set[str]:
        return {task.get_name() for task in asyncio.all_tasks()}

    return client.portal.call(names)  # type: ignore[union-attr]


def test_trimming_runs_on_schedule(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    second_call = threading.Event()
    real = memory.trim

    def counted_trim() -> bool:
        calls.append(real())
        if len(calls) == 2:
            second_call.set()
        return calls[-1]

    monkeypatch.setattr(memory, "trim", counted_trim)
    with TestClient(create_app(settings.model_copy(update={"malloc_trim_seconds": 0.05}))) as c:
        assert TRIM_TASK in _task_names(c)
        assert second_call.wait(30), f"trimmed {len(calls)} times, not again and again"


def test_zero_seconds_never_trims(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(True) or True)
    with TestClient(create_app(settings.model_copy(update={"malloc_trim_seconds": 0}))) as c:
        names = _task_names(c)
        assert "batcher" in names  # the lifespan's tasks are running ...
        assert TRIM_TASK not in names  # ... and no trimming among them
    assert calls == []

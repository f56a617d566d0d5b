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


def test_freezing_excludes_what_is_alive_from_collections_and_keeps_refcounting() -> None:
    import gc
    import weakref

    class Node:
        pass

    gc.unfreeze()
    try:
        alive = Node()
        assert memory.freeze_long_lived() >= 1 and gc.is_tracked(alive)
        gone = weakref.ref(alive)
        del alive  # frozen, yet freed by reference counting when dropped
        assert gone() is None
    finally:
        gc.unfreeze()


def test_the_heap_is_frozen_once_per_change_after_the_adapters_held_settle() -> None:
    from app.services import Settled

    watch = Settled((0, 0, 0))
    seen = [(0, 0, 0), (5, 0, 5), (9, 0, 9), (9, 0, 9), (9, 0, 9), (8, 0, 10), (8, 0, 10)]
    assert [watch.check(v) for v in seen] == [False, False, False, True, False, False, True]

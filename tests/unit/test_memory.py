"""The service hands freed heap memory back to the OS on a schedule (MALLOC_TRIM_SECONDS)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app import memory
from app.config import Settings
from app.main import create_app


@pytest.mark.skipif(not memory.can_trim(), reason="needs glibc's malloc_trim")
@pytest.mark.parametrize(("seconds", "expect_calls"), [(0.05, True), (0, False)])
def test_trimming_runs_on_schedule_or_not_at_all(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                 seconds: float, expect_calls: bool) -> None:
    calls: list[float] = []
    real = memory.trim
    monkeypatch.setattr(memory, "trim", lambda: calls.append(time.monotonic()) or real())
    with TestClient(create_app(settings.model_copy(update={"malloc_trim_seconds": seconds}))):
        time.sleep(0.5)
    assert (len(calls) >= 2) is expect_calls, calls

"""Fixtures shared by the API tests: a client serving stored adapters, and settings that let jobs run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.adapters.store import AdapterStore
from app.config import Settings
from app.main import create_app
from app.tasks import HeadConfig
from tests.conftest import AdapterFactory


@pytest.fixture
def served(store: AdapterStore, make_adapter: AdapterFactory, client: TestClient) -> TestClient:
    make_adapter(store, "sentiment", seed=1)
    make_adapter(store, "sentiment", seed=2)
    make_adapter(store, "similarity", seed=3, head=HeadConfig(task_type="regression"))
    assert client.post("/adapters/reload").json()["versions"] == 3
    return client


@pytest.fixture
def train_settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return Settings(base_model=str(tiny_model_dir), adapters_dir=tmp_path / "store",
                    store_poll_seconds=0, num_threads=1, train_threads=1, train_nice=0,
                    cancel_grace_seconds=5, max_train_rows=500, max_train_upload_bytes=200_000)


@pytest.fixture
def api(train_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(train_settings)) as client:
        yield client

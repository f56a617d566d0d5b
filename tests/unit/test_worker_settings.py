"""A training worker is launched with the settings it uses, and never with an API key."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest

from app.adapters.store import AdapterStore
from app.config import Settings
from app.training.manager import JobManager
from app.training.worker import WorkerSettings, run_job

ADMIN_KEY, PREDICT_KEY, FILE_KEY = "admin-k3y-0f-the-env", "predict-k3y-0f-the-env", "k3y-1n-a-file"
# What run_job reads of its settings: the rest of Settings stays in the API process.
WORKER_FIELDS = {"log_level", "log_format", "train_nice", "train_threads", "jobs_db_path",
                 "max_train_rows", "max_text_chars", "base_model", "device", "max_seq_length",
                 "adapters_dir", "adapter_cache_path"}


@pytest.fixture
def keyed_settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    keys_file = tmp_path / "api-keys-secret.txt"
    keys_file.write_text(f"# the file's own key\n{FILE_KEY}:admin\n")
    return Settings(base_model=str(tiny_model_dir), adapters_dir=tmp_path / "store",
                    api_keys=f"{ADMIN_KEY}:admin,{PREDICT_KEY}:predict", api_keys_file=keys_file,
                    train_threads=2, train_nice=5, max_train_rows=123, log_format="text")


def test_worker_is_launched_without_keys(keyed_settings: Settings,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class RecordedProcess:
        """Stands in for multiprocessing's Process: records how it was made, starts nothing."""

        pid = None

        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)

        def start(self) -> None:
            pass

    manager = JobManager(keyed_settings, AdapterStore(keyed_settings.adapters_dir),
                         lambda name, version: None)
    monkeypatch.setattr(manager._ctx, "Process", RecordedProcess)
    job = manager.db.create("senti", "classification", {}, {"train": [], "validation": None}, 10)
    manager._tick()  # claims the job and launches its worker

    [launch] = made
    sent = pickle.dumps((launch["args"], launch.get("kwargs")))  # what reaches the process
    for secret in (ADMIN_KEY, PREDICT_KEY, FILE_KEY, keyed_settings.api_keys_file.name):
        assert secret.encode() not in sent
        assert secret not in repr(launch)
    assert str(keyed_settings.api_keys_file) not in repr(launch)
    assert launch["target"] is run_job
    assert launch["args"][:2] == (job.id, WorkerSettings.of(keyed_settings))


def test_worker_settings_hold_what_the_worker_uses(keyed_settings: Settings) -> None:
    worker_settings = WorkerSettings.of(keyed_settings)
    assert pickle.loads(pickle.dumps(worker_settings)) == worker_settings
    values = dataclasses.asdict(worker_settings)
    assert set(values) == WORKER_FIELDS
    assert values == {name: getattr(keyed_settings, name) for name in WORKER_FIELDS}
    assert values["jobs_db_path"] == Path(keyed_settings.adapters_dir) / ".jobs.sqlite3"
    with pytest.raises(dataclasses.FrozenInstanceError):
        worker_settings.device = "cuda"  # type: ignore[misc]

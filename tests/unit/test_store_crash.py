"""Crash safety of the store: a writer SIGKILLed at any moment of a save, and writers that race
cleaners and deletes, leave only complete versions visible and no stray temporary directory."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.adapters import store as store_module
from app.adapters.store import TMP_PREFIX, AdapterStore
from app.config import Settings
from app.constants import WEIGHTS_FILE
from app.main import create_app
from app.model.encoder import FrozenEncoder
from tests.conftest import AdapterFactory

ROOT = Path(__file__).resolve().parents[2]

# Saves copies of adapter "t" v1 as new versions. `pause` names a moment of the save at which it
# says so (creates the file `ready`) and waits to be killed; "loop" saves again and again.
WRITER = """
import os, sys, time
from pathlib import Path
from safetensors.torch import load
from app.adapters import store as store_module
from app.adapters.store import AdapterStore
from app.constants import WEIGHTS_FILE

root, pause, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
store = AdapterStore(root)
meta = store.metadata("t", 1).model_copy(update={"version": 0, "weights_sha256": ""})
tensors = load(store.weights_bytes("t", 1))

def wait_for_the_kill():
    ready.touch()
    time.sleep(600)

real_write, real_rename = store_module._write_file, os.rename

def write(path, data):
    if pause == "mid-weights" and path.name == WEIGHTS_FILE:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        wait_for_the_kill()
    real_write(path, data)

def rename(src, dst):
    if pause == "before-rename":
        wait_for_the_kill()
    real_rename(src, dst)
    if pause == "after-rename":
        wait_for_the_kill()

store_module._write_file, os.rename = write, rename
if pause == "loop":
    ready.touch()
    while True:
        store.save(meta, tensors)
store.save(meta, tensors)
"""


def _start_writer(root: Path, pause: str, ready: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), pause, str(ready)],
                            cwd=ROOT, stderr=subprocess.PIPE)


def _kill_when_ready(proc: subprocess.Popen[bytes], ready: Path, after_s: float = 0.0) -> None:
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the writer never reached the moment to kill it"
        time.sleep(0.02)
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def _temp_dirs(store: AdapterStore) -> list[Path]:
    return list(store.root.glob(f"*/{TMP_PREFIX}*"))


def _assert_every_visible_version_loads(store: AdapterStore, encoder: FrozenEncoder) -> None:
    first = store.load("t", 1, encoder.info)
    for version in store.versions("t"):
        loaded = store.load("t", version, encoder.info)  # checksum, shapes, finiteness
        assert loaded.meta.version == version
        for key, tensor in first.adapter.items():
            torch.testing.assert_close(loaded.adapter[key], tensor)


@pytest.mark.parametrize(("pause", "visible"), [
    ("mid-weights", [1]),  # half the weights on disk
    ("before-rename", [1]),  # both files complete and fsync'd, not yet renamed into place
    ("after-rename", [1, 2]),  # renamed: the version is complete the moment it is visible
])
@pytest.mark.slow
def test_writer_killed_during_a_save(settings: Settings, store: AdapterStore,
                                     encoder: FrozenEncoder, make_adapter: AdapterFactory,
                                     tmp_path: Path, pause: str, visible: list[int]) -> None:
    make_adapter(store, "t", seed=1)
    writer = _start_writer(store.root, pause, tmp_path / "ready")
    _kill_when_ready(writer, tmp_path / "ready")

    assert store.versions("t") == visible
    assert list(store.snapshot()) == [("t", v) for v in visible]
    _assert_every_visible_version_loads(store, encoder)
    assert len(_temp_dirs(store)) == (0 if pause == "after-rename" else 1)

    with TestClient(create_app(settings)) as client:  # the restart
        assert not _temp_dirs(store)
        listed = client.get("/adapters").json()["adapters"]
        assert [(a["name"], a["versions"]) for a in listed] == [("t", visible)]
        r = client.post("/predict/t", json={"inputs": "the film was good"})
        assert r.status_code == 200 and r.json()["version"] == visible[-1]
    assert make_adapter(store, "t", seed=2).version == visible[-1] + 1


@pytest.mark.slow
def test_writer_killed_at_random_moments(store: AdapterStore, encoder: FrozenEncoder,
                                         make_adapter: AdapterFactory, tmp_path: Path) -> None:
    make_adapter(store, "t", seed=1)
    rng = random.Random(6)
    for round_ in range(2):
        ready = tmp_path / f"ready-{round_}"
        writer = _start_writer(store.root, "loop", ready)
        _kill_when_ready(writer, ready, after_s=rng.uniform(0.05, 0.5))
        _assert_every_visible_version_loads(store, encoder)
        store.clean_stale()
        assert not _temp_dirs(store)
    assert len(store.versions("t")) > 2  # the writer did get through whole saves


def test_cleaning_while_saving_leaves_the_writer_alone(store: AdapterStore,
                                                      encoder: FrozenEncoder,
                                                      make_adapter: AdapterFactory,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process starting up (clean_stale) or deleting the name during a save."""
    make_adapter(store, "t", seed=1)
    real_write = store_module._write_file
    interference = iter([store.clean_stale, lambda: store.delete("t")])

    def write_while_others_work(path: Path, data: bytes) -> None:
        real_write(path, data)
        if path.name == WEIGHTS_FILE:
            next(interference)()
            assert len(_temp_dirs(store)) == 1  # the save's own directory survived

    monkeypatch.setattr(store_module, "_write_file", write_while_others_work)
    assert make_adapter(store, "t", seed=2).version == 2  # cleaned around
    assert make_adapter(store, "t", seed=3).version == 3  # every version deleted meanwhile
    assert store.versions("t") == [3]
    assert store.load("t", 3, encoder.info).meta.version == 3
    assert not _temp_dirs(store)


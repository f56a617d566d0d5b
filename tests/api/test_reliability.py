"""Faults a real server meets: shutdown with work in flight, kill -9, and a store it cannot write.

Servers here are real: uvicorn in a thread (to hold a request in the model at will), or
`python -m uvicorn` in a process of its own (to send it real signals).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.adapters import store as store_module
from app.adapters.store import TMP_PREFIX, AdapterStore
from app.config import Settings
from app.main import create_app
from app.serving.engine import InferenceEngine
from app.training import jobs as jobs_module
from app.training import manager as manager_module
from app.training.jobs import JobDB
from app.training.worker import run_job
from tests.api.helpers import QUICK, SLOW, submit_job, wait_for_job
from tests.conftest import AdapterFactory

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll until `condition()` holds; the timeout is only a safety net."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.05)


def _wait_gone(pid: int) -> None:
    _until(lambda: _gone(pid), f"process {pid} has exited")


def _refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=5)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:  # accepted, then dropped as the listening socket closed
        pass
    return False


def _temp_dirs(settings: Settings) -> list[Path]:
    return list(Path(settings.adapters_dir).glob(f"*/{TMP_PREFIX}*"))


# ------------------------------------------------------------------------ graceful shutdown
@pytest.mark.slow
def test_shutdown_answers_the_request_in_flight_and_requeues_the_job(
        train_settings: Settings, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What SIGTERM does to `adapter-serve serve`: uvicorn's should_exit, as its handler sets it."""
    make_adapter(AdapterStore(train_settings.adapters_dir), "t")
    in_model, release = threading.Event(), threading.Event()
    real_run = InferenceEngine.run

    def held_run(self: InferenceEngine, rows: list[Any]) -> list[Any]:
        in_model.set()
        release.wait(30)
        return real_run(self, rows)

    monkeypatch.setattr(InferenceEngine, "run", held_run)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(train_settings), host="127.0.0.1",
                                           port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=60) as client:
        while not server.started:
            assert serving.is_alive()
            time.sleep(0.05)
        job = submit_job(client, config=SLOW)
        running = wait_for_job(client, job["job_id"], ("running",),
                               predicate=lambda j: j["progress"] is not None)
        worker = JobDB(train_settings.jobs_db_path).get(job["job_id"]).worker_pid
        answer: dict[str, httpx.Response] = {}
        asking = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"{url}/predict/t", json={"inputs": ["the film was good"]}, timeout=60)))
        asking.start()
        assert in_model.wait(30)

        server.should_exit = True
        _until(lambda: _refuses_connections(url), "new connections are refused")
        assert serving.is_alive() and asking.is_alive()  # but the one in flight is awaited
        release.set()
        asking.join(30)
        serving.join(60)
    assert not serving.is_alive()
    r = answer["r"]
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and len(r.json()["predictions"]) == 1
    # the lifespan's exit ran: the worker is stopped, its job queued again
    assert worker and running["status"] == "running"
    _wait_gone(worker)
    after = JobDB(train_settings.jobs_db_path).get(job["job_id"])
    assert (after.status, after.started_at, after.progress, after.history) == (
        "queued", None, None, [])
    assert AdapterStore(train_settings.adapters_dir).versions("senti") == []


# --------------------------------------------------------------------- real server processes
@contextmanager
def _server_process(settings: Settings, log: Path) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                       httpx.Client]]:
    """`python -m uvicorn app.main:app` in a session of its own, configured by environment."""
    port = _free_port()
    env = {**os.environ, "BASE_MODEL": settings.base_model,
           "ADAPTERS_DIR": str(settings.adapters_dir), "STORE_POLL_SECONDS": "0",
           "NUM_THREADS": "1", "TRAIN_THREADS": "1", "TRAIN_NICE": "0", "LOG_LEVEL": "info"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                                 "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_kill_9_of_the_server_mid_training_then_restart(train_settings: Settings,
                                                        make_adapter: AdapterFactory,
                                                        tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    make_adapter(AdapterStore(train_settings.adapters_dir), "t")
    with _server_process(train_settings, log) as (server, client):
        lost = submit_job(client, config=SLOW)
        waiting = submit_job(client, name="waiting", config=QUICK)
        wait_for_job(client, lost["job_id"], ("running",),
                     predicate=lambda j: j["progress"] is not None)
        worker = JobDB(train_settings.jobs_db_path).get(lost["job_id"]).worker_pid
        assert worker
        server.send_signal(signal.SIGKILL)
        assert server.wait(10) == -signal.SIGKILL
    _wait_gone(worker)  # the worker does not outlive the server
    db = JobDB(train_settings.jobs_db_path)
    assert db.get(lost["job_id"]).status == "running"  # what the dead server left behind

    with _server_process(train_settings, log) as (server, client):
        failed = client.get(f"/jobs/{lost['job_id']}").json()
        assert failed["status"] == "failed", failed
        assert failed["error"] == ("interrupted: the service stopped while this job was "
                                   "running; nothing was stored")
        assert client.get(f"/jobs/{waiting['job_id']}").json()["status"] in ("queued", "running")
        assert [(a["name"], a["versions"]) for a in client.get("/adapters").json()["adapters"]
                ] == [("t", [1])]
        assert client.post("/predict/t", json={"inputs": "good"}).status_code == 200
    assert AdapterStore(train_settings.adapters_dir).versions("senti") == []
    assert not _temp_dirs(train_settings)


@pytest.mark.slow
def test_sigterm_to_the_process_group_requeues_the_job(train_settings: Settings,
                                                       tmp_path: Path) -> None:
    """Ctrl+C in a terminal signals the whole process group: the API process still decides."""
    with _server_process(train_settings, tmp_path / "server.log") as (server, client):
        job = submit_job(client, config=SLOW)
        wait_for_job(client, job["job_id"], ("running",),
                     predicate=lambda j: j["progress"] is not None)
        worker = JobDB(train_settings.jobs_db_path).get(job["job_id"]).worker_pid
        assert worker
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises it when done
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    _wait_gone(worker)
    after = JobDB(train_settings.jobs_db_path).get(job["job_id"])
    assert after.status == "queued" and after.error is None


# ------------------------------------------------------- a worker that dies after storing
def _run_job_killed_after_saving(job_id: str, settings_json: dict[str, Any],
                                 parent_pid: int) -> None:
    """The training worker, killed the moment its adapter is stored (runs in the worker)."""
    real_save = AdapterStore.save

    def save_then_die(self: AdapterStore, *args: Any, **kwargs: Any) -> Any:
        real_save(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    pytest.MonkeyPatch().setattr(AdapterStore, "save", save_then_die)
    run_job(job_id, settings_json, parent_pid)


@pytest.mark.slow
def test_worker_killed_between_storing_and_reporting_succeeds(
        api: TestClient, train_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "run_job", _run_job_killed_after_saving)
    job = submit_job(api, config={**QUICK, "epochs": 1})
    done = wait_for_job(api, job["job_id"], ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["adapter"] == {"name": "senti", "version": 1}
    assert done["result"]["best_epoch"] == 1 and "accuracy" in done["result"]["metrics"]
    assert api.get("/adapters/senti").json()["metrics"]["job_id"] == job["job_id"]
    assert api.post("/predict/senti", json={"inputs": "good"}).status_code == 200


def test_restart_finds_the_version_a_job_stored_before_the_server_died(
        train_settings: Settings, make_adapter: AdapterFactory) -> None:
    db = JobDB(train_settings.jobs_db_path)
    spec = {"labels": ["neg", "pos"], "config": QUICK}
    stored = db.create("stored", "classification", spec, {"train": [], "validation": None}, 10)
    lost = db.create("lost", "classification", spec, {"train": [], "validation": None}, 10)
    db.claim_next(), db.claim_next()  # both were running when the server died ...
    record = {"job_id": stored.id, "validation": {"accuracy": 0.75}, "best_epoch": 2,
              "stop_reason": "completed", "train_seconds": 1.5, "train_examples_per_second": 40.0}
    # ... and one had stored its adapter, as a worker does, but not said so
    make_adapter(AdapterStore(train_settings.adapters_dir), "stored", metrics=record)
    with TestClient(create_app(train_settings)) as client:
        found = client.get(f"/jobs/{stored.id}").json()
        assert (found["status"], found["adapter"], found["error"]) == (
            "succeeded", {"name": "stored", "version": 1}, None)
        assert found["result"] == {"best_epoch": 2, "metrics": {"accuracy": 0.75},
                                   "stop_reason": "completed", "train_seconds": 1.5,
                                   "train_examples_per_second": 40.0}
        assert client.get(f"/jobs/{lost.id}").json()["status"] == "failed"
        assert client.post("/predict/stored", json={"inputs": "good"}).status_code == 200


# ----------------------------------------------------------------- a store it cannot write
FAULTS = {
    "disk full": ("_write_file", errno.ENOSPC),
    "quota exceeded": ("_write_file", errno.EDQUOT),
    "read-only file system": ("mkdtemp", errno.EROFS),
    "permission denied": ("mkdtemp", errno.EACCES),
}


def _break_the_store(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """Writes into the store fail as they would on a full, read-only or forbidden disk.

    Needed because chmod does not stop root, and tests may run as root.
    """
    where, code = FAULTS[fault]
    real_write = store_module._write_file

    def fail(*args: Any, **kwargs: Any) -> None:
        if where == "_write_file":  # part of the file got out first
            path, data = args
            real_write(path, data[: len(data) // 2])
        raise OSError(code, os.strerror(code))

    target = store_module if where == "_write_file" else store_module.tempfile
    monkeypatch.setattr(target, where, fail)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_import_into_a_store_that_cannot_be_written_is_a_507(
        client: TestClient, store: AdapterStore, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    make_adapter(store, "t")
    client.post("/adapters/reload")
    data = store.weights_path("t", 1).read_bytes()
    with monkeypatch.context() as broken:
        _break_the_store(broken, fault)
        r = client.put("/adapters/copy", content=data)
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "store_write_failed"
        assert os.strerror(FAULTS[fault][1]) in error["message"]
        assert "nothing was stored" in error["message"]
        ok = client.post("/predict/t", json={"inputs": ["the film was good"]})
        assert ok.status_code == 200  # serving goes on
    assert store.names() == ["t"] and not list(store.root.glob(f"*/{TMP_PREFIX}*"))
    assert client.put("/adapters/copy", content=data).status_code == 201  # once fixed


def test_import_into_a_read_only_store_is_a_507(client: TestClient, store: AdapterStore,
                                                make_adapter: AdapterFactory) -> None:
    """The real thing, where chmod binds (not for root: the test above simulates it)."""
    make_adapter(store, "t")
    client.post("/adapters/reload")
    data = store.weights_path("t", 1).read_bytes()
    for path in (store.root, store.root / "t"):
        path.chmod(0o555)
    try:
        try:
            (store.root / "t" / "probe").touch()
            pytest.skip("chmod does not stop this user (root) from writing")
        except PermissionError:
            pass
        for name in ("t", "new"):  # a new version in an existing directory, and a new name
            r = client.put(f"/adapters/{name}", content=data)
            assert r.status_code == 507, r.text
            assert "Permission denied; nothing was stored" in r.json()["error"]["message"]
        assert client.post("/predict/t", json={"inputs": "good"}).status_code == 200
    finally:
        for path in (store.root, store.root / "t"):
            path.chmod(0o755)
    assert store.names() == ["t"] and store.versions("t") == [1]


def test_training_request_on_a_full_disk_is_a_507(client: TestClient, store: AdapterStore,
                                                  make_adapter: AdapterFactory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The job database (in the store directory by default) cannot grow: SQLite's own error."""
    make_adapter(store, "t")
    client.post("/adapters/reload")
    real_connect = sqlite3.connect

    def connect_on_a_full_disk(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = real_connect(*args, **kwargs)
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages}")  # no page more: SQLITE_FULL
        return db

    rng = random.Random(0)
    rows = [{"text": "".join(rng.choice("abcdefgh ") for _ in range(150)), "label": i % 2}
            for i in range(64)]  # incompressible enough to need new pages
    with monkeypatch.context() as full:
        full.setattr(jobs_module.sqlite3, "connect", connect_on_a_full_disk)
        r = client.post("/adapters", json={"name": "senti", "task_type": "classification",
                                           "train": rows})
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "store_write_failed"
        assert r.json()["error"]["message"] == ("cannot write the training job database: "
                                                "database or disk is full")
        assert client.post("/predict/t", json={"inputs": "good"}).status_code == 200
    assert client.get("/jobs").json()["jobs"] == []


def _run_job_on_a_full_disk(job_id: str, settings_json: dict[str, Any], parent_pid: int) -> None:
    """The training worker, on a disk that fills up just as it saves (runs in the worker)."""
    _break_the_store(pytest.MonkeyPatch(), "disk full")
    run_job(job_id, settings_json, parent_pid)


@pytest.mark.slow
def test_training_that_cannot_save_fails_with_the_reason(
        train_settings: Settings, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_adapter(AdapterStore(train_settings.adapters_dir), "t")
    monkeypatch.setattr(manager_module, "run_job", _run_job_on_a_full_disk)
    with TestClient(create_app(train_settings)) as client:
        job = submit_job(client, config={**QUICK, "epochs": 2})
        done = wait_for_job(client, job["job_id"], ("succeeded", "failed", "cancelled"))
        assert done["status"] == "failed"
        assert done["error"] == ("cannot write adapter 'senti' to the adapter store: "
                                 "No space left on device; nothing was stored")
        assert [m["epoch"] for m in done["metrics"]] == [1, 2]  # it trained to the end
        assert done["adapter"] is None
        assert client.get("/adapters/senti").status_code == 404
        r = client.post("/predict/t", json={"inputs": "the film was good"})
        assert r.status_code == 200
    assert not _temp_dirs(train_settings)

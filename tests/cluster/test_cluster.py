"""The service on a two-node Ray Serve cluster: the same API through the proxy, training on the
cluster, adapter affinity, and a replica killed under load (slow: starts Ray)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.adapters.backends import open_store
from tests.api.helpers import QUICK, SLOW, submit_job, wait_for_job
from tests.cluster.conftest import ADMIN_KEY, RayServe

ray = pytest.importorskip("ray")

from app.cluster import probe  # noqa: E402
from app.cluster.launch import APP_NAME  # noqa: E402

pytestmark = pytest.mark.slow
ADAPTERS = [f"a{i}" for i in range(8)]
TEXT = {"inputs": ["a good film"]}


def served_by(r: httpx.Response) -> str:
    return r.headers["x-served-by"]


def eventually(check: Any, timeout: float = 60, what: str = "") -> Any:
    """Call `check` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def adapters(ray_serve: RayServe, encoder: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> list[str]:
    """Eight adapters written to the S3 store by another process (this one); every replica
    picks them up through the store's change detection."""
    from app.adapters.format import join, new_metadata
    from tests.conftest import random_adapter

    store = open_store(ray_serve.adapters_dir, tmp_path_factory.mktemp("writer-cache"))
    store.open()
    for seed, name in enumerate(ADAPTERS):
        adapter, head, head_cfg = random_adapter(encoder, seed=seed)
        store.save(new_metadata(name, head_cfg, adapter.config, encoder.info),
                   join(adapter.state_dict(), head.state_dict()))
    with ray_serve.client() as c:
        for name in ADAPTERS:
            eventually(lambda n=name: c.post(f"/predict/{n}", json=TEXT).status_code == 200,
                       what=f"{name} served")
    return ADAPTERS


def test_the_same_api_answers_through_the_proxy(ray_serve: RayServe, client: TestClient) -> None:
    """`client` is the service on one machine: the cluster answers the same JSON."""
    with ray_serve.client() as c, ray_serve.client(key=None) as anonymous:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/task-types").json() == client.get("/task-types").json()
        assert "adapter_serve" in c.get("/metrics").text
        for method, path, body in (("POST", "/predict/nope", TEXT),
                                   ("POST", "/predict/nope", {"inputs": []}),
                                   ("GET", "/jobs/0123", None),
                                   ("GET", "/no-such-path", None)):
            here, there = client.request(method, path, json=body), c.request(method, path, json=body)
            assert there.status_code == here.status_code, there.text
            mine, theirs = here.json()["error"], there.json()["error"]
            assert {**theirs, "request_id": ""} == {**mine, "request_id": ""}
            assert there.headers["X-Request-ID"] == theirs["request_id"]
        refused = anonymous.post("/predict/nope", json=TEXT)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"


def test_a_job_trains_on_the_cluster_and_every_replica_serves_it(ray_serve: RayServe) -> None:
    with ray_serve.client() as c:
        job = submit_job(c, "senti", config=QUICK)
        events = []
        with c.stream("GET", f"/jobs/{job['job_id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
                elif line.startswith("data: ") and events[-1] == "end":
                    assert json.loads(line.removeprefix("data: ")) == {"status": "succeeded"}
        assert events[0] == "progress" and events[-1] == "end"
        done = c.get(f"/jobs/{job['job_id']}").json()
        assert done["status"] == "succeeded" and done["adapter"] == {"name": "senti",
                                                                      "version": 1}
    finished = datetime.fromisoformat(done["finished_at"]).timestamp()
    probe.ask_every_replica(APP_NAME, probe.request("POST", "/predict/senti", TEXT, ADMIN_KEY),
                            replicas=2)
    print(f"every replica served the new adapter {time.time() - finished:.2f} s after the job "
          f"ended")


def test_requests_for_an_adapter_stay_on_one_replica(ray_serve: RayServe,
                                                     adapters: list[str]) -> None:
    home = {}
    with ray_serve.client() as c:
        for name in adapters:  # once Ray's routers know who holds it, it stays there
            def settled(name: str = name) -> str | None:
                seen = {served_by(c.post(f"/predict/{name}", json=TEXT)) for _ in range(3)}
                return seen.pop() if len(seen) == 1 else None

            home[name] = eventually(settled, what=f"{name} settles on a replica")
        for name in adapters:
            assert {served_by(c.post(f"/predict/{name}", json=TEXT)) for _ in range(10)} == {
                home[name]}
    assert len(set(home.values())) == 2, f"the adapters were not spread over both: {home}"


def test_a_job_is_cancelled_through_the_cluster(ray_serve: RayServe) -> None:
    with ray_serve.client() as c:
        job = submit_job(c, "slow", config=SLOW, rows=256)
        wait_for_job(c, job["job_id"], ("running",), predicate=lambda j: j["progress"])
        assert c.delete(f"/jobs/{job['job_id']}").status_code == 200
        done = wait_for_job(c, job["job_id"], ("cancelled", "failed", "succeeded"))
        assert done["status"] == "cancelled"
        assert done["error"] == "cancelled on request; nothing was stored"
        assert c.get("/adapters/slow").status_code == 404


def test_a_replica_killed_under_load_is_replaced(ray_serve: RayServe,
                                                 adapters: list[str]) -> None:
    """kill -9 the replica holding an adapter while 8 clients ask for it: the requests it had
    fail with a clear 503 (replica_unavailable), none after Ray has replaced it; nothing stored
    is lost."""
    outcomes: list[tuple[float, int, str]] = []  # (sent at, status, error code)
    stop = threading.Event()

    def load() -> None:
        with ray_serve.client() as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post(f"/predict/{adapters[0]}", json=TEXT)
                    code = "" if r.status_code == 200 else r.json()["error"]["code"]
                    outcomes.append((sent, r.status_code, code))
                except httpx.HTTPError as exc:
                    outcomes.append((sent, 0, type(exc).__name__))

    with ray_serve.client() as c:
        victim = served_by(c.post(f"/predict/{adapters[0]}", json=TEXT))
        before = {a["name"] for a in c.get("/adapters").json()["adapters"]}
        jobs_before = c.get("/jobs").json()["jobs"]
    clients = [threading.Thread(target=load) for _ in range(8)]
    for t in clients:
        t.start()
    try:
        eventually(lambda: sum(s == 200 for _, s, _ in outcomes) >= 50, what="load running")
        os.kill(probe.replica_pid(victim), signal.SIGKILL)
        killed = time.monotonic()
        eventually(lambda: any(t > killed and s == 200 for t, s, _ in outcomes[-8:]),
                   timeout=120, what="answers again")
        eventually(lambda: probe.running_replicas(APP_NAME) == 2, timeout=120, what="the replica replaced")
        recovered = time.monotonic()
        eventually(lambda: sum(t > recovered for t, _, _ in outcomes) >= 200,
                   what="load after recovery")
    finally:
        stop.set()
        for t in clients:
            t.join()
    failed = [(t, s, code) for t, s, code in outcomes if s != 200]
    print(f"{len(failed)} of {len(outcomes)} requests failed: "
          f"{sorted({(s, code) for _, s, code in failed})}")
    assert all((s, code) == (503, "replica_unavailable") for _, s, code in failed), failed
    assert not [f for f in failed if f[0] > recovered]
    with ray_serve.client() as c:
        assert {a["name"] for a in c.get("/adapters").json()["adapters"]} == before
        assert c.get("/jobs").json()["jobs"] == jobs_before
        r = c.post(f"/predict/{adapters[0]}", json=TEXT)
        assert r.status_code == 200 and served_by(r) != victim

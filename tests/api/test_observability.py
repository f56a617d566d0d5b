"""What operators see: Prometheus metrics, request ids, JSON logs, readiness."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.adapters.store import AdapterStore
from app.config import Settings
from app.main import create_app
from app.status import (
    AdapterResidency,
    DeviceMemory,
    JobProgress,
    ServiceStatus,
    TierState,
)
from tests.api.helpers import SLOW, submit_job, wait_for_job
from tests.conftest import AdapterFactory


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _parse(response.text)


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_predictions_batches_and_adapters(served: TestClient) -> None:
    before = _samples(served)
    for task, n in (("sentiment", 3), ("similarity", 2)):
        r = served.post(f"/predict/{task}", json={"inputs": [f"text {i}" for i in range(n)]})
        assert r.status_code == 200
    served.post("/predict/nope", json={"inputs": ["x"]})
    after = _samples(served)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    route = {"method": "POST", "route": "/predict/{task}"}
    assert delta("adapter_serve_http_requests_total", **route, status="200") == 2
    assert delta("adapter_serve_http_requests_total", **route, status="404") == 1
    assert delta("adapter_serve_http_request_duration_seconds_count", **route) == 3
    assert delta("adapter_serve_predict_inputs_total", task="sentiment") == 3
    assert delta("adapter_serve_predict_inputs_total", task="similarity") == 2
    assert delta("adapter_serve_predict_duration_seconds_count", task="sentiment") == 1
    assert delta("adapter_serve_batch_rows_sum") == 5
    assert delta("adapter_serve_batch_rows_count") == delta("adapter_serve_batch_adapters_count")
    assert ("adapter_serve_predict_inputs_total", (("task", "nope"),)) not in after
    assert _value(after, "adapter_serve_adapters_stored") == 2
    assert _value(after, "adapter_serve_adapters_resident") == 2
    assert _value(after, "adapter_serve_adapter_loads_total") == 2
    assert _value(after, "adapter_serve_adapter_evictions_total", tier="device") == 0
    assert _value(after, "adapter_serve_queue_rows") == 0
    assert _value(after, "adapter_serve_training_workers") == 0
    assert _value(after, "process_resident_memory_bytes") > 0


def test_evictions_cold_loads_and_tiers(settings: Settings, store: AdapterStore,
                                        make_adapter: AdapterFactory) -> None:
    for name in ("a", "b", "c"):
        make_adapter(store, name)
    with TestClient(create_app(settings.model_copy(update={"max_resident_adapters": 1}))) as c:
        for name in ("a", "b", "c", "c"):
            assert c.post(f"/predict/{name}", json={"inputs": ["x"]}).status_code == 200
        samples = _samples(c)
        assert _value(samples, "adapter_serve_adapter_loads_total") == 3
        assert _value(samples, "adapter_serve_adapter_evictions_total", tier="device") == 2
        assert _value(samples, "adapter_serve_adapter_evictions_total", tier="host") == 0
        assert _value(samples, "adapter_serve_adapters_resident") == 1
        assert _value(samples, "adapter_serve_adapter_lookups_total", tier="disk") == 3
        assert _value(samples, "adapter_serve_adapter_lookups_total", tier="device") == 1
        assert _value(samples, "adapter_serve_adapter_hit_ratio") == 0.25
        assert _value(samples, "adapter_serve_adapter_cold_loads_total") == 3
        assert _value(samples, "adapter_serve_adapter_hot_path_loads_total") == 0
        assert _value(samples, "adapter_serve_adapter_cold_load_seconds_count") >= 3
        assert _value(samples, "adapter_serve_tier_adapters", tier="device") == 1
        assert _value(samples, "adapter_serve_tier_bytes", tier="device") > 0
        assert _value(samples, "adapter_serve_tier_budget_bytes", tier="host") == 0  # CPU: one tier
        assert c.get("/adapters/c").json()["tier"] == "device"
        assert c.get("/adapters/a").json()["tier"] == "disk"


@pytest.mark.slow
def test_training_jobs_workers_and_progress(train_settings: Settings) -> None:
    with TestClient(create_app(train_settings)) as client:
        job = submit_job(client, config=SLOW)["job_id"]
        wait_for_job(client, job, ("running",), predicate=lambda j: j["progress"] is not None)
        samples = _samples(client)
        assert _value(samples, "adapter_serve_training_jobs", status="running") == 1
        assert _value(samples, "adapter_serve_training_workers") == 1
        assert 0 < _value(samples, "adapter_serve_training_progress_ratio", job=job,
                          name="senti") < 1
        assert client.get("/readyz").json()["training"] == {"workers": 1, "running": 1,
                                                            "queued": 0}
        client.delete(f"/jobs/{job}")
        wait_for_job(client, job, ("cancelled",), timeout=30)
        samples = _samples(client)
        assert _value(samples, "adapter_serve_training_jobs", status="cancelled") == 1
        assert _value(samples, "adapter_serve_training_jobs", status="running") == 0


def test_request_ids_are_echoed_or_made(served: TestClient) -> None:
    mine = served.get("/adapters", headers={"X-Request-ID": "trace-42.a:b"})
    assert mine.headers["X-Request-ID"] == "trace-42.a:b"
    made = served.get("/adapters")
    assert len(made.headers["X-Request-ID"]) == 32
    # An id that could forge log lines or headers is replaced, not echoed.
    for bad in ("two words", "x" * 200, "a\tb"):
        r = served.post("/predict/nope", json={"inputs": ["x"]}, headers={"X-Request-ID": bad})
        rid = r.headers["X-Request-ID"]
        assert rid != bad and r.json()["error"]["request_id"] == rid


def test_logs_are_json_lines_with_the_request_id(served: TestClient,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    served.post("/predict/sentiment", json={"inputs": ["x"]}, headers={"X-Request-ID": "rq-1"})
    served.post("/predict/nope", json={"inputs": ["x"]}, headers={"X-Request-ID": "rq-2"})
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]
    access = {ln["request_id"]: ln for ln in lines if ln["logger"] == "app.access"}
    assert access["rq-1"]["status"] == 200 and access["rq-1"]["path"] == "/predict/sentiment"
    assert access["rq-2"]["status"] == 404 and access["rq-2"]["level"] == "INFO"
    assert {"time", "message", "method", "duration_ms"} <= set(access["rq-1"])


def test_readiness_reports_the_workers(served: TestClient) -> None:
    ready = served.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["adapters"] == 2 and body["queue_rows"] == 0
    assert body["training"] == {"workers": 0, "running": 0, "queued": 0}
    services = served.app.state.services  # type: ignore[attr-defined]
    served.portal.call(services.batcher.stop)  # type: ignore[union-attr]
    down = served.get("/readyz")
    assert down.status_code == 503 and down.json()["status"] == "degraded"
    assert "the batching worker has stopped" in down.json()["problems"]


def test_unexpected_errors_are_500s_with_the_request_id(
        settings: Settings, store: AdapterStore, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    make_adapter(store, "sentiment")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        services = client.app.state.services  # type: ignore[attr-defined]

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(services.predictor, "predict", broken)
        r = client.post("/predict/sentiment", json={"inputs": ["x"]},
                        headers={"X-Request-ID": "boom-1"})
        assert r.status_code == 500 and r.headers["X-Request-ID"] == "boom-1"
        assert r.json()["error"] == {"code": "internal_error", "request_id": "boom-1",
                                     "message": "internal error; the request id identifies it "
                                                "in the logs"}
        assert "secret internal detail" in caplog.text  # in the log, with its traceback
        assert client.get("/healthz").status_code == 200


def test_device_memory_gauges_come_from_the_status_snapshot() -> None:
    tier = TierState(adapters=1, bytes=100, budget=1000)
    residency = AdapterResidency(device=tier, host=tier, lookups={"device": 3, "disk": 1},
                                 hit_ratio=0.75, cold_loads=1, hot_path_loads=0, promotions=1,
                                 evictions={"device": 0, "host": 0})
    status = ServiceStatus(queue_rows=3, adapters_stored=2, residency=residency,
                           jobs={"running": 1}, running=(JobProgress("j1", "senti", 0.25),),
                           workers_alive=1, device_memory=DeviceMemory(10, 20, 30))
    samples = _parse(metrics.render(lambda: status).decode())
    assert _value(samples, "adapter_serve_device_memory_allocated_bytes") == 10
    assert _value(samples, "adapter_serve_device_memory_total_bytes") == 30
    assert _value(samples, "adapter_serve_training_progress_ratio", job="j1", name="senti") == 0.25
    assert _value(samples, "adapter_serve_queue_rows") == 3


def test_per_task_metrics_stop_naming_tasks_beyond_the_label_limit(
        settings: Settings, store: AdapterStore, make_adapter: AdapterFactory) -> None:
    names = ("limit-a", "limit-b", "limit-c")  # names no other test uses: metrics are per process
    for name in names:
        make_adapter(store, name)
    with TestClient(create_app(settings.model_copy(update={"metrics_task_labels": 1}))) as c:
        before = _samples(c)
        for name in (*names, "limit-a"):
            assert c.post(f"/predict/{name}", json={"inputs": ["x"]}).status_code == 200
        after = _samples(c)
    inputs = "adapter_serve_predict_inputs_total"
    assert _value(after, inputs, task="limit-a") - _value(before, inputs, task="limit-a") == 2
    assert _value(after, inputs, task="_other") - _value(before, inputs, task="_other") == 2
    assert (inputs, (("task", "limit-b"),)) not in after

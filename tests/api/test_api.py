"""The HTTP contract through the real lifespan: every endpoint, every error, and no 5xx."""

from __future__ import annotations

import io
import json
import struct
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app import errors
from app.adapters.store import AdapterStore
from app.api.errors import http_answer
from app.config import Settings
from app.main import create_app
from app.tasks import HeadConfig
from tests.conftest import AdapterFactory


def _error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# ------------------------------------------------------------------------------- predict
def test_predict_forms_of_input(served: TestClient) -> None:
    one = served.post("/predict/sentiment", json={"inputs": "the film was good"}).json()
    assert one["task"] == "sentiment" and one["version"] == 2
    (p,) = one["predictions"]
    assert p["label"] in ("neg", "pos") and p["score"] == max(p["scores"].values())
    assert sum(p["scores"].values()) == pytest.approx(1.0)

    many = served.post("/predict/sentiment", json={"inputs": ["bad", "the film was good"]}).json()
    second = many["predictions"][1]  # same text, same answer, in order
    assert second["label"] == p["label"] and second["scores"] == pytest.approx(p["scores"])

    pairs = served.post("/predict/similarity", json={"inputs": [
        {"text": "a film", "text_pair": "a movie"}, {"text": "a film"}]}).json()
    assert [set(x) for x in pairs["predictions"]] == [{"value"}, {"value"}]


def test_predict_pinned_version_differs_from_newest(served: TestClient) -> None:
    body = {"inputs": ["the film was good"]}
    v1 = served.post("/predict/sentiment", json={**body, "version": 1}).json()
    v2 = served.post("/predict/sentiment", json=body).json()
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["predictions"][0]["scores"] != pytest.approx(v2["predictions"][0]["scores"])


@pytest.mark.parametrize(("path", "body", "status", "code", "message"), [
    ("/predict/nope", {"inputs": "x"}, 404, "adapter_not_found", "no adapter named 'nope'"),
    ("/predict/sentiment", {"inputs": "x", "version": 9}, 404, "adapter_not_found",
     r"no version 9 \(it has \[1, 2\]\)"),
    ("/predict/Bad..Name", {"inputs": "x"}, 422, "invalid_name", "invalid adapter name"),
    ("/predict/sentiment", {"text": "x"}, 422, "validation_error", "inputs: Field required"),
    ("/predict/sentiment", {"inputs": 5}, 422, "validation_error", "inputs"),
    ("/predict/sentiment", {"inputs": []}, 422, "invalid_input", "inputs is empty"),
    ("/predict/sentiment", {"inputs": ["  "]}, 422, "invalid_input", r"inputs\[0\].text is empty"),
    ("/predict/sentiment", {"inputs": ["a"] * 9}, 413, "payload_too_large",
     "9 inputs in one request; the limit is 8"),
    ("/predict/sentiment", {"inputs": ["a" * 201]}, 413, "payload_too_large",
     r"inputs\[0\].text has 201 characters; the limit is 200"),
    ("/predict/sentiment", {"inputs": [{"text": "a", "text_pair": "b" * 300}]}, 413,
     "payload_too_large", "text_pair has 300 characters"),
])
def test_predict_errors(served: TestClient, path: str, body: dict, status: int, code: str,
                        message: str) -> None:
    err = _error(served.post(path, json=body), status, code)
    assert __import__("re").search(message, err["message"]), err["message"]
    assert served.post("/predict/sentiment", json={"inputs": "good"}).status_code == 200


def test_malformed_json_is_a_422(served: TestClient) -> None:
    r = served.post("/predict/sentiment", content=b"{not json",
                    headers={"content-type": "application/json"})
    _error(r, 422, "validation_error")


# ------------------------------------------------------------------------------ adapters
def test_list_describe_download_delete(served: TestClient) -> None:
    listing = served.get("/adapters").json()["adapters"]
    assert [(a["name"], a["versions"], a["task_type"]) for a in listing] == [
        ("sentiment", [1, 2], "classification"), ("similarity", [1], "regression")]

    detail = served.get("/adapters/sentiment").json()
    assert detail["version"] == 2 and detail["versions"] == [1, 2]
    assert detail["labels"] == ["neg", "pos"] and len(detail["weights_sha256"]) == 64
    assert detail["base_model"]["name"].endswith("tiny-bert0")
    assert served.get("/adapters/sentiment", params={"version": 1}).json()["version"] == 1

    download = served.get("/adapters/sentiment/download", params={"version": 1})
    assert download.status_code == 200 and download.headers["X-Adapter-Version"] == "1"
    assert "sentiment-v1.safetensors" in download.headers["content-disposition"]
    assert set(st_load(download.content)) >= {"head.out.weight", "adapter.layers.0.ffn.up.bias"}

    assert served.delete("/adapters/sentiment", params={"version": 2}).json() == {
        "name": "sentiment", "deleted_versions": [2]}
    assert served.post("/predict/sentiment", json={"inputs": "good"}).json()["version"] == 1
    assert served.delete("/adapters/sentiment").json()["deleted_versions"] == [1]
    _error(served.post("/predict/sentiment", json={"inputs": "good"}), 404, "adapter_not_found")
    _error(served.get("/adapters/sentiment"), 404, "adapter_not_found")
    _error(served.delete("/adapters/sentiment"), 404, "adapter_not_found")
    _error(served.get("/adapters/nope/download"), 404, "adapter_not_found")


def test_import_round_trip_raw_and_multipart(served: TestClient) -> None:
    data = served.get("/adapters/sentiment/download").content
    expected = served.post("/predict/sentiment", json={"inputs": "good"}).json()["predictions"]

    raw = served.put("/adapters/copy", content=data,
                     headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 201 and raw.json()["version"] == 1
    multi = served.put("/adapters/copy", files={"file": ("a.safetensors", data)})
    assert multi.status_code == 201 and multi.json()["version"] == 2
    got = served.post("/predict/copy", json={"inputs": "good"}).json()
    assert got["version"] == 2
    assert got["predictions"][0]["scores"] == pytest.approx(expected[0]["scores"])


def _rewrite(data: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    (n,) = struct.unpack("<Q", data[:8])
    header_meta = json.loads(data[8:8 + n])["__metadata__"]
    tensors = {k: v.clone() for k, v in st_load(data).items()}
    change(tensors, header_meta)
    return st_save(tensors, metadata=header_meta)


def _other_base(tensors, meta) -> None:  # type: ignore[no-untyped-def]
    inner = json.loads(meta["adapter_serve"])
    inner["base_model"]["fingerprint"] = "0" * 64
    meta["adapter_serve"] = json.dumps(inner)


@pytest.mark.parametrize(("damage", "status", "code", "message"), [
    (lambda d: d[:-50], 422, "invalid_adapter", "truncated"),
    (lambda d: b"garbage" * 10, 422, "invalid_adapter", "not a valid safetensors"),
    (lambda d: _rewrite(d, lambda t, m: t.__setitem__("head.out.bias", t["head.out.bias"][:1])),
     422, "invalid_adapter", r"head.out.bias has shape \(1,\), expected \(2,\)"),
    (lambda d: _rewrite(d, lambda t, m: t["adapter.layers.1.ffn.down.bias"].fill_(float("nan"))),
     422, "invalid_adapter", "non-finite values"),
    (lambda d: _rewrite(d, lambda t, m: m.pop("adapter_serve")), 422, "invalid_adapter",
     "carries no adapter metadata"),
    (lambda d: _rewrite(d, _other_base), 409, "incompatible_adapter", "was trained on base"),
    (lambda d: b"", 422, "invalid_input", "upload is empty"),
])
def test_bad_imports_are_refused_and_service_keeps_serving(
        served: TestClient, damage, status: int, code: str, message: str) -> None:  # type: ignore[no-untyped-def]
    data = served.get("/adapters/sentiment/download").content
    err = _error(served.put("/adapters/broken", content=damage(data)), status, code)
    assert __import__("re").search(message, err["message"]), err["message"]
    _error(served.get("/adapters/broken"), 404, "adapter_not_found")
    assert served.post("/predict/sentiment", json={"inputs": "good"}).status_code == 200


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


@pytest.mark.parametrize(("files", "headers", "message"), [
    ({"weights.bin": b"x"}, {}, "no adapter_config.json in the uploaded directory"),
    ({"d/adapter_config.json": b'{"x": 1}'}, {"content-type": "application/zip"},
     "neither AdapterHub's"),
    ({"../adapter_config.json": b"{}"}, {}, "unsafe path"),
])
def test_bad_library_archives_are_refused_and_nothing_is_stored(
        served: TestClient, files: dict[str, bytes], headers: dict[str, str], message: str) -> None:
    err = _error(served.put("/adapters/lib", content=_zip(files), headers=headers), 422,
                 "invalid_adapter")
    assert message in err["message"]
    _error(served.get("/adapters/lib"), 404, "adapter_not_found")
    multi = served.put("/adapters/lib", files={"file": ("a.zip", _zip(files), "application/zip")})
    assert multi.status_code == 422
    assert served.post("/predict/sentiment", json={"inputs": "good"}).status_code == 200


def test_download_in_an_unknown_format_is_refused(served: TestClient) -> None:
    r = served.get("/adapters/sentiment/download", params={"format": "onnx"})
    assert r.status_code == 422 and "format" in r.text


def test_import_size_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(base_model=str(tiny_model_dir), adapters_dir=tmp_path / "s",
                        store_poll_seconds=0, max_adapter_bytes=2048)
    with TestClient(create_app(settings)) as client:
        _error(client.put("/adapters/x", content=b"\0" * 5000), 413, "payload_too_large")


def test_corrupted_file_on_disk_gives_a_clear_error(served: TestClient, store: AdapterStore
                                                    ) -> None:
    path = store.weights_path("similarity", 1)
    path.write_bytes(path.read_bytes()[:-10])
    err = _error(served.post("/predict/similarity", json={"inputs": "x"}), 422, "invalid_adapter")
    assert "checksum mismatch" in err["message"]
    assert served.post("/predict/sentiment", json={"inputs": "good"}).status_code == 200


# ------------------------------------------------------------------------- health, misc
def test_health_and_readiness(served: TestClient) -> None:
    assert served.get("/healthz").json() == {"status": "ok"}
    ready = served.get("/readyz").json()
    assert ready["status"] == "ready" and ready["adapters"] == 2 and ready["device"] == "cpu"


def test_request_id_is_echoed_and_unknown_routes_are_json(served: TestClient) -> None:
    r = served.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    _error(served.get("/nowhere"), 404, "not_found")
    _error(served.patch("/adapters/sentiment"), 405, "method_not_allowed")


def test_store_changes_on_disk_are_served_after_reload(served: TestClient, store: AdapterStore,
                                                       make_adapter: AdapterFactory) -> None:
    make_adapter(AdapterStore(store.root), "late", seed=9)
    _error(served.post("/predict/late", json={"inputs": "x"}), 404, "adapter_not_found")
    assert served.post("/adapters/reload").json()["changed"] is True
    assert served.post("/predict/late", json={"inputs": "x"}).status_code == 200


def test_concurrent_predictions_while_importing_and_deleting(served: TestClient) -> None:
    data = served.get("/adapters/sentiment/download").content
    expected = served.post("/predict/sentiment", json={"inputs": ["good", "bad"],
                                                       "version": 2}).json()
    statuses: list[int] = []
    mismatches: list[dict] = []

    def predict() -> None:
        for _ in range(15):
            r = served.post("/predict/sentiment", json={"inputs": ["good", "bad"], "version": 2})
            statuses.append(r.status_code)
            got = r.json()["predictions"]
            if [g["label"] for g in got] != [e["label"] for e in expected["predictions"]] or any(
                    g["scores"] != pytest.approx(e["scores"], abs=1e-5)
                    for g, e in zip(got, expected["predictions"], strict=True)):
                mismatches.append(got)
            statuses.append(served.post("/predict/churn", json={"inputs": "x"}).status_code)

    def churn() -> None:
        for _ in range(8):
            statuses.append(served.put("/adapters/churn", content=data).status_code)
            statuses.append(served.delete("/adapters/churn").status_code)

    crashed: list[BaseException] = []

    def guarded(body: Any) -> Any:  # an exception in a thread must fail the test, not vanish
        def run() -> None:
            try:
                body()
            except BaseException as exc:
                crashed.append(exc)
        return run

    threads = [threading.Thread(target=guarded(predict)) for _ in range(6)] + [
        threading.Thread(target=guarded(churn))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not crashed
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 201, 404}
    assert not mismatches


def test_store_is_polled_for_changes(tiny_model_dir: Path, tmp_path: Path,
                                     make_adapter: AdapterFactory) -> None:
    import time

    settings = Settings(base_model=str(tiny_model_dir), adapters_dir=tmp_path / "s",
                        store_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        make_adapter(AdapterStore(settings.adapters_dir), "polled")
        deadline = time.monotonic() + 5
        while client.post("/predict/polled", json={"inputs": "x"}).status_code == 404:
            assert time.monotonic() < deadline, "the new adapter was never picked up"
            time.sleep(0.05)
        AdapterStore(settings.adapters_dir).delete("polled")
        while client.post("/predict/polled", json={"inputs": "x"}).status_code == 200:
            assert time.monotonic() < deadline, "the deleted adapter is still served"
            time.sleep(0.05)


def test_concurrent_requests_for_many_tasks_equal_one_at_a_time(
        store: AdapterStore, make_adapter: AdapterFactory, settings: Settings) -> None:
    """Requests batched together across tasks get the numbers each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    tasks = [f"task{i}" for i in range(6)]
    for i, name in enumerate(tasks):
        head = HeadConfig(task_type="regression") if i % 2 else None
        make_adapter(store, name, seed=10 + i, head=head)
    texts = ["the film was good", "john visited paris", "not very fun at all", "bad",
             "mary works at acme corp and she loves it"]
    jobs = [(t, x) for t in tasks for x in texts]

    def numbers(body: dict) -> list[float]:
        p = body["predictions"][0]
        return list(p["scores"].values()) if "scores" in p else [p["value"]]

    with TestClient(create_app(settings.model_copy(update={"max_resident_adapters": 8}))) as c:
        alone = [numbers(c.post(f"/predict/{t}", json={"inputs": x}).json()) for t, x in jobs]
        batcher = c.app.state.services.batcher
        before = batcher.batches_run
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(
                lambda job: numbers(c.post(f"/predict/{job[0]}", json={"inputs": job[1]}).json()),
                jobs))
        assert batcher.batches_run - before < len(jobs)  # rows of different tasks shared batches
    for a, b in zip(alone, together, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------------- error mapping
class _LateError(errors.NameInTrainingError):
    """A subclass the table does not list: it answers as its parent."""


@pytest.mark.parametrize(("error", "status"), [
    (errors.ServiceError, 400), (errors.UnauthorizedError, 401), (errors.ForbiddenError, 403),
    (errors.NotFoundError, 404), (errors.AdapterNotFoundError, 404),
    (errors.JobNotFoundError, 404), (errors.IncompatibleAdapterError, 409),
    (errors.NameInTrainingError, 409), (_LateError, 409), (errors.PayloadTooLargeError, 413),
    (errors.InvalidNameError, 422), (errors.InvalidInputError, 422),
    (errors.InvalidAdapterError, 422), (errors.JobQueueFullError, 429),
    (errors.ClientGoneError, 499), (errors.UnsupportedModelError, 500),
    (errors.OverloadedError, 503), (errors.NotReadyError, 503),
    (errors.RequestTimeoutError, 504), (errors.StoreWriteError, 507),
])
def test_each_domain_error_has_its_status(error: type[errors.ServiceError], status: int) -> None:
    assert http_answer(error("x")).status == status


@pytest.mark.parametrize(("error", "headers"), [
    (errors.OverloadedError("x", retry_after=2.6), {"Retry-After": "3"}),
    (errors.OverloadedError("x", retry_after=0.2), {"Retry-After": "1"}),
    (errors.UnauthorizedError("x"), {"WWW-Authenticate": "Bearer"}),
    (errors.InvalidInputError("x"), {}),
])
def test_headers_derived_from_the_error(error: errors.ServiceError, headers: dict) -> None:
    assert http_answer(error).headers(error) == headers


def test_a_cold_load_holds_up_only_the_requests_that_need_it(
        settings: Settings, store: AdapterStore, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk read of one adapter runs on the loader thread: requests for adapters already in
    memory are answered while it is blocked, and the waiting request is answered once it ends."""
    make_adapter(store, "warm", seed=1)
    make_adapter(store, "cold", seed=2)
    reading, release = threading.Event(), threading.Event()
    load = AdapterStore.load

    def blocked_load(self: AdapterStore, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "cold":
            reading.set()
            assert release.wait(30), "the test never released the cold load"
        return load(self, name, *args, **kwargs)

    monkeypatch.setattr(AdapterStore, "load", blocked_load)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict/warm", json={"inputs": ["x"]}).status_code == 200
        answers: list[int] = []
        waiting = threading.Thread(target=lambda: answers.append(
            client.post("/predict/cold", json={"inputs": ["x"]}).status_code))
        waiting.start()
        assert reading.wait(30)
        for _ in range(3):  # served while the cold read is stuck
            assert client.post("/predict/warm", json={"inputs": ["y"]}).status_code == 200
        assert client.get("/adapters/cold").json()["tier"] == "disk" and not answers
        release.set()
        waiting.join(30)
        assert answers == [200]
        assert client.get("/adapters/cold").json()["tier"] == "device"

"""Training through the API: job lifecycle in worker processes, cancel, crashes, restarts, bad input."""

from __future__ import annotations

import json
import os
import signal

import pytest
from fastapi.testclient import TestClient

from app.adapters.store import AdapterStore
from app.config import Settings
from app.main import create_app
from app.training.jobs import JobDB
from tests.api.helpers import QUICK, SLOW, submit_job, wait_for_job
from tests.unit.test_training_loop import sentiment_rows


@pytest.mark.slow
def test_lifecycle_train_then_serve_without_restart(api: TestClient) -> None:
    job = submit_job(api)
    assert job["status"] == "queued" and job["labels"] == ["neg", "pos"]
    seen = {job["status"]}
    running = wait_for_job(api, job["job_id"], ("running", "succeeded"))
    seen.add(running["status"])
    done = wait_for_job(api, job["job_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert seen == {"queued", "running"} or "succeeded" in seen
    assert done["adapter"] == {"name": "senti", "version": 1}
    assert [m["epoch"] for m in done["metrics"]] == [1, 2, 3]
    assert {"accuracy", "macro_f1"} <= set(done["metrics"][0])
    assert done["progress"]["step"] == done["progress"]["total_steps"] > 0
    assert done["progress"]["fraction"] == 1.0
    steps = [step for step, _ in done["loss_curve"]]  # every step's loss, for the chart
    assert steps == list(range(1, done["progress"]["total_steps"] + 1))
    assert done["started_at"] and done["finished_at"] and done["error"] is None

    r = api.post("/predict/senti", json={"inputs": ["the film was great", "awful"]})
    assert r.status_code == 200 and r.json()["version"] == 1
    meta = api.get("/adapters/senti").json()
    assert meta["metrics"]["best_epoch"] == done["result"]["best_epoch"]
    assert [j["job_id"] for j in api.get("/jobs").json()["jobs"]] == [job["job_id"]]
    assert api.get("/jobs", params={"status": "failed"}).json()["jobs"] == []

    events = api.get(f"/jobs/{job['job_id']}/events").text
    assert events.rstrip().endswith('data: {"status": "succeeded"}')
    assert json.loads(events.split("data: ")[1].split("\n")[0])["status"] == "succeeded"


@pytest.mark.slow
def test_multipart_jsonl_and_csv_uploads(api: TestClient) -> None:
    rows = sentiment_rows(40)
    jsonl = "\n".join(json.dumps(r) for r in rows).encode()
    csv = ("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows)).encode()
    first = api.post("/adapters", data={"name": "up", "task_type": "classification",
                                        "config": json.dumps({**QUICK, "epochs": 1}),
                                        "labels": "neg,pos"},
                     files={"file": ("rows.jsonl", jsonl)})
    assert first.status_code == 202, first.text
    assert wait_for_job(api, first.json()["job_id"], ("succeeded", "failed"))["status"] == "succeeded"
    second = api.post("/adapters", data={"name": "up", "task_type": "classification",
                                         "config": json.dumps({**QUICK, "epochs": 1})},
                      files={"file": ("rows.csv", csv), "validation_file": ("v.csv", csv)})
    assert second.status_code == 202, second.text
    assert second.json()["validation_rows"] == 40
    done = wait_for_job(api, second.json()["job_id"], ("succeeded", "failed"))
    assert done["adapter"] == {"name": "up", "version": 2}


@pytest.mark.slow
def test_cancel_running_job_stores_nothing(train_settings: Settings) -> None:
    # No kill after a grace period: the worker must stop by itself, long before the end of its
    # 100 epochs of 500 rows.
    patient = train_settings.model_copy(update={"cancel_grace_seconds": 600})
    with TestClient(create_app(patient)) as api:
        job = submit_job(api, config=SLOW, rows=500)
        wait_for_job(api, job["job_id"], ("running",), predicate=lambda j: j["progress"] is not None)
        r = api.delete(f"/jobs/{job['job_id']}")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        done = wait_for_job(api, job["job_id"], ("cancelled", "failed", "succeeded"), timeout=30)
        assert done["status"] == "cancelled" and done["progress"]["fraction"] < 1
        assert "nothing was stored" in done["error"]
        assert AdapterStore(train_settings.adapters_dir).versions("senti") == []
        # the name is free again
        assert submit_job(api, config={**QUICK, "epochs": 1})["status"] == "queued"


@pytest.mark.slow
def test_cancel_queued_job(api: TestClient) -> None:
    first = submit_job(api, name="first", config=SLOW)
    second = submit_job(api, name="second")
    assert api.delete(f"/jobs/{second['job_id']}").json()["status"] == "cancelled"
    api.delete(f"/jobs/{first['job_id']}")
    wait_for_job(api, first["job_id"], ("cancelled",), timeout=30)
    assert api.get(f"/jobs/{second['job_id']}").json()["started_at"] is None


@pytest.mark.slow
def test_killed_worker_fails_the_job_with_a_reason(api: TestClient, train_settings: Settings
                                                   ) -> None:
    job = submit_job(api, config=SLOW)
    wait_for_job(api, job["job_id"], ("running",), predicate=lambda j: j["progress"] is not None)
    pid = JobDB(train_settings.jobs_db_path).get(job["job_id"]).worker_pid
    assert pid and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    done = wait_for_job(api, job["job_id"], ("failed", "succeeded", "cancelled"), timeout=30)
    assert done["status"] == "failed"
    assert "killed by SIGKILL" in done["error"] and "nothing was stored" in done["error"]
    store = AdapterStore(train_settings.adapters_dir)
    assert store.versions("senti") == []
    assert not list(store.root.glob("senti/.tmp-*"))
    assert api.get("/healthz").status_code == 200


@pytest.mark.slow
def test_restart_recovery(train_settings: Settings) -> None:
    db = JobDB(train_settings.jobs_db_path)
    payload = {"train": sentiment_rows(32), "validation": None}
    spec = {"labels": ["neg", "pos"], "config": {**QUICK, "epochs": 1}}
    crashed = db.create("crashed", "classification", spec, payload, 10)
    db.claim_next()  # it was running when the process died
    waiting = db.create("waiting", "classification", spec, payload, 10)
    with TestClient(create_app(train_settings)) as client:
        lost = client.get(f"/jobs/{crashed.id}").json()
        assert lost["status"] == "failed" and "service stopped while this job was running" in lost["error"]
        done = wait_for_job(client, waiting.id, ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        assert client.post("/predict/waiting", json={"inputs": "good"}).status_code == 200


@pytest.mark.slow
def test_graceful_shutdown_requeues_the_running_job(train_settings: Settings) -> None:
    with TestClient(create_app(train_settings)) as client:
        job = submit_job(client, config=SLOW)
        wait_for_job(client, job["job_id"], ("running",))
    assert JobDB(train_settings.jobs_db_path).get(job["job_id"]).status == "queued"


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    ({"name": "../x"}, 422, "invalid_name", "invalid adapter name"),
    ({"name": "Caps"}, 422, "invalid_name", "invalid adapter name"),
    ({"train": []}, 422, "invalid_input", "train is empty"),
    ({"train": [{"text": "a", "label": "x"}] * 8}, 422, "invalid_input", "only one class"),
    ({"labels": ["neg"]}, 422, "invalid_input", "is not one of the labels"),
    ({"train": [{"text": 3, "label": "a"}]}, 422, "invalid_input", "must be a string, got int"),
    ({"train": [{"label": "a"}]}, 422, "invalid_input", "must be a string, got nothing"),
    ({"task_type": "clustering"}, 422, "validation_error", "task_type"),
    ({"config": {"epochs": 0}}, 422, "validation_error", "config.epochs"),
    ({"config": {"learning_rate": "fast"}}, 422, "validation_error", "config.learning_rate"),
    ({"config": {"unknown": 1}}, 422, "validation_error", "config.unknown"),
    ({"config": {"reduction_factor": float("inf")}}, 422, "validation_error",
     "config.reduction_factor: Input should be a finite number"),
    ({"config": {"seed": 2**70}}, 422, "validation_error", "config.seed"),
    ({"train": sentiment_rows(600)}, 422, "invalid_input", "exceed the limit of 500"),
    ({"train": [{"text": "x" * 300_000, "label": "a"}]}, 413, "payload_too_large",
     "MAX_TRAIN_UPLOAD_BYTES"),
])
def test_bad_training_requests_are_refused_and_nothing_is_queued(
        api: TestClient, body: dict, status: int, code: str, message: str) -> None:
    full = {"name": "bad", "task_type": "classification", "train": sentiment_rows(16), **body}
    r = api.post("/adapters", content=json.dumps(full),  # json.dumps writes Infinity as is
                 headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert message in r.json()["error"]["message"]
    assert api.get("/jobs").json()["jobs"] == []


@pytest.mark.parametrize(("files", "data", "message"), [
    ({"file": ("t.jsonl", b'{"text": "a", "label": 1}\nnot json')}, {}, "line 2 is not valid JSON"),
    ({"file": ("t.csv", b"a,b\n1,2")}, {}, "header naming 'text' and 'label'"),
    ({}, {}, "file part named 'file'"),
    ({"file": ("t.jsonl", b'{"text": "a", "label": 1}')}, {"config": "{oops"}, "config is not valid JSON"),
])
def test_bad_uploads_are_refused(api: TestClient, files: dict, data: dict, message: str) -> None:
    r = api.post("/adapters", data={"name": "bad", "task_type": "classification", **data},
                 files=files or {"other": ("x", b"")})
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]
    assert api.get("/jobs").json()["jobs"] == []


@pytest.mark.slow
def test_name_already_being_trained_is_a_409(api: TestClient) -> None:
    job = submit_job(api, config=SLOW)
    r = api.post("/adapters", json={"name": "senti", "task_type": "classification",
                                    "train": sentiment_rows(16)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_in_training"
    assert job["job_id"] in r.json()["error"]["message"]
    api.delete(f"/jobs/{job['job_id']}")
    wait_for_job(api, job["job_id"], ("cancelled",), timeout=30)


def test_unknown_job_is_a_404(api: TestClient) -> None:
    for r in (api.get("/jobs/nope"), api.delete("/jobs/nope"), api.get("/jobs/nope/events")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


@pytest.mark.slow
def test_token_classification_trained_and_served(api: TestClient) -> None:
    from tests.unit.test_ner import ner_rows

    r = api.post("/adapters", json={"name": "ner", "task_type": "token_classification",
                                    "train": ner_rows(160), "config": {**QUICK, "epochs": 4}})
    assert r.status_code == 202, r.text
    assert r.json()["labels"] == ["O", "B-LOC", "B-ORG", "I-ORG", "B-PER"]
    done = wait_for_job(api, r.json()["job_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["metrics"]["f1"] >= 0.8

    text = "today john was in  london and acme corp"
    body = api.post("/predict/ner", json={"inputs": [text, {"tokens": ["mary", "in", "paris"]}],
                                          "return_tokens": True}).json()
    first, second = body["predictions"]
    assert [(e["text"], e["label"]) for e in first["entities"]] == [
        ("john", "PER"), ("london", "LOC"), ("acme corp", "ORG")]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in first["entities"])
    assert [t["token"] for t in first["tokens"]] == text.split()
    assert [(e["text"], e["start"], e["end"]) for e in second["entities"]] == [
        ("mary", 0, 4), ("paris", 8, 13)]

    senti = submit_job(api, name="senti", config={**QUICK, "epochs": 1})
    wait_for_job(api, senti["job_id"], ("succeeded",))
    mixed = api.post("/predict/ner", json={"inputs": "john in paris"})  # alongside senti rows
    assert [e["label"] for e in mixed.json()["predictions"][0]["entities"]] == ["PER", "LOC"]
    for name, item, message in [
            ("ner", {"text": "a", "text_pair": "b"}, "tags single texts"),
            ("senti", {"tokens": ["a"]}, "is pre-split tokens")]:
        err = api.post(f"/predict/{name}", json={"inputs": [item]})
        assert err.status_code == 422 and message in err.json()["error"]["message"]


@pytest.mark.slow
def test_question_answering_trained_and_served(api: TestClient) -> None:
    from tests.unit.test_qa import qa_rows

    config = {**QUICK, "epochs": 6, "max_seq_length": 32, "doc_stride": 8}
    r = api.post("/adapters", json={"name": "qa", "task_type": "question_answering",
                                    "train": qa_rows(160), "config": config})
    assert r.status_code == 202, r.text
    done = wait_for_job(api, r.json()["job_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["metrics"]["exact_match"] >= 0.8

    context = "the film was good and mary was very fun today in the film"
    long_context = " ".join(["the film was good"] * 30 + ["john"])  # many windows
    body = api.post("/predict/qa", json={"inputs": [
        {"question": "who was it ?", "context": context},
        {"question": "who was it ?", "context": long_context}]}).json()
    short, long = body["predictions"]
    assert (short["answer"], context[short["start"]:short["end"]]) == ("mary", "mary")
    assert long["answer"] == "john" and long_context[long["start"]:long["end"]] == "john"
    for item, message in [({"text": "x"}, "send {question, context}"),
                          ({"question": "q", "context": " "}, "context is empty")]:
        err = api.post("/predict/qa", json={"inputs": [item]})
        assert err.status_code == 422 and message in err.json()["error"]["message"]
    bad = api.post("/adapters", json={"name": "qa2", "task_type": "question_answering", "train": [
        {"question": "q", "context": "abc", "answers": {"text": ["x"], "answer_start": [1]}}] * 8})
    assert bad.status_code == 422 and "not inside the context" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_multi_label_trained_and_served(api: TestClient) -> None:
    from tests.unit.test_multi_label import multi_label_rows

    r = api.post("/adapters", json={
        "name": "tags", "task_type": "multi_label_classification", "train": multi_label_rows(160),
        "validation": multi_label_rows(40, seed=1), "config": {**QUICK, "epochs": 6}})
    assert r.status_code == 202, r.text
    assert r.json()["labels"] == ["person", "place", "positive"]
    done = wait_for_job(api, r.json()["job_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["metrics"]["micro_f1"] >= 0.8
    held_out = multi_label_rows(8, seed=2)
    body = api.post("/predict/tags", json={"inputs": [r["text"] for r in held_out]}).json()
    right = 0
    for row, pred in zip(held_out, body["predictions"], strict=True):
        assert set(pred["scores"]) == {"person", "place", "positive"}
        assert pred["labels"] == sorted((k for k, v in pred["scores"].items() if v >= 0.5),
                                        key=lambda k: -pred["scores"][k])
        right += sorted(pred["labels"]) == row["labels"]
    assert right >= 5, body
    bad = api.post("/adapters", json={"name": "t2", "task_type": "multi_label_classification",
                                      "train": [{"text": "a", "label": "x"}] * 8})
    assert bad.status_code == 422 and "has no 'labels'" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_lora_adapter_trained_and_served_beside_a_bottleneck(api: TestClient) -> None:
    lora = submit_job(api, name="senti-lora", rows=160, config={
        **QUICK, "epochs": 6, "method": "lora", "r": 4, "alpha": 8,
        "target_modules": ["query", "value", "intermediate"]})
    bottleneck = submit_job(api, name="senti", rows=160, config={**QUICK, "epochs": 6})
    for job in (lora, bottleneck):
        done = wait_for_job(api, job["job_id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["metrics"]["accuracy"] >= 0.75
    meta = api.get("/adapters/senti-lora").json()
    assert meta["adapter_config"]["method"] == "lora" and meta["adapter_config"]["r"] == 4
    texts = ["the film was great", "awful and boring"]
    alone = [api.post(f"/predict/{n}", json={"inputs": texts}).json()["predictions"]
             for n in ("senti-lora", "senti")]
    assert [p["label"] for p in alone[0]] == ["pos", "neg"]
    bad = api.post("/adapters", json={"name": "x", "task_type": "classification",
                                      "train": [{"text": "a", "label": "x"}] * 8,
                                      "config": {"method": "lora", "target_modules": ["pooler"]}})
    assert bad.status_code == 422 and "target_modules" in bad.text

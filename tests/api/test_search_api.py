"""A search through the API: options checked at the door, the trials table over GET /jobs/{id}
and its events, one adapter stored, and a cancel that keeps the best trial only when asked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.adapters.store import AdapterStore
from app.config import Settings
from tests.api.helpers import QUICK, submit_job, wait_for_job
from tests.unit.test_training_loop import sentiment_rows

SEARCH = {**QUICK, "search": {"trials": 3, "budget_s": 600, "space": {"epochs": [1, 2]}}}


@pytest.mark.parametrize(("search", "field"), [
    ({"trials": 0}, "config.search.trials"),
    ({"budget_s": -5}, "config.search.budget_s"),
    ({"objective": "fastest"}, "config.search.objective"),
    ({"keep_best_on_cancel": "maybe"}, "config.search.keep_best_on_cancel"),
    ({"space": {"designs": ["prefix"]}}, "config.search.space.designs"),
    ({"space": {"learning_rate": [0.1, 0.001]}}, "config.search.space.learning_rate"),
    ({"space": {"lora_ranks": [0]}}, "config.search.space.lora_ranks"),
    ({"budget": 60}, "config.search.budget:"),
])
def test_bad_search_options_are_a_422_naming_the_field(api: TestClient, search: dict,
                                                       field: str) -> None:
    r = api.post("/adapters", json={"name": "bad", "task_type": "classification",
                                    "train": sentiment_rows(16), "config": {"search": search}})
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]  # the field's whole path
    assert api.get("/jobs").json()["jobs"] == []


def test_too_few_rows_for_a_search_is_a_422(api: TestClient) -> None:
    r = api.post("/adapters", json={"name": "few", "task_type": "classification",
                                    "train": sentiment_rows(4), "config": SEARCH})
    assert r.status_code == 422, r.text
    assert "config.search needs at least 4 training rows" in r.json()["error"]["message"]
    assert api.get("/jobs").json()["jobs"] == []
    r = api.post("/adapters", json={"name": "few", "task_type": "classification",
                                    "train": sentiment_rows(2), "validation": sentiment_rows(2),
                                    "config": SEARCH})
    assert r.status_code == 422, r.text
    assert "(or at least 4 validation rows to judge them on; 2 were sent)" \
        in r.json()["error"]["message"]


@pytest.mark.slow
def test_search_job_reports_its_trials_and_stores_one_adapter(api: TestClient,
                                                              train_settings: Settings) -> None:
    job = submit_job(api, name="searched", config=SEARCH)
    assert job["config"]["search"]["trials"] == 3
    done = wait_for_job(api, job["job_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert AdapterStore(train_settings.adapters_dir).versions("searched") == [1]
    table = done["search"]
    assert [t["number"] for t in table["trials"]] == [0, 1, 2]
    assert table["winner"] is not None and table["why"] and table["phase"] == "done"
    summary = done["result"]["search"]
    assert summary["trials"] == 3 and summary["winner"] == table["winner"]
    assert summary["complete"] + summary["pruned"] + summary["failed"] == 3
    assert {m["trial"] for m in done["metrics"]} >= {0, "final"}  # every trial's epochs
    meta = api.get("/adapters/searched").json()
    assert meta["metrics"]["search"]["trials"][0]["relative_cost"] >= 1
    events = api.get(f"/jobs/{job['job_id']}/events").text
    last = json.loads(events.split("event: progress\ndata: ")[-1].split("\n")[0])
    assert last["search"]["winner"] == table["winner"]
    r = api.post("/predict/searched", json={"inputs": ["the film was great"]})
    assert r.status_code == 200


@pytest.mark.slow
def test_validation_rows_sent_judge_the_trials(api: TestClient) -> None:
    # 4 training rows are too few to split for a search, but validation rows judge it instead
    job = submit_job(api, name="judged", config=SEARCH, rows=4,
                     validation=sentiment_rows(20, seed=3))
    done = wait_for_job(api, job["job_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert {m["trial"] for m in done["metrics"]} == {0, 1, 2}  # the winner kept: no "final"
    meta = api.get("/adapters/judged").json()["metrics"]
    splits = meta["search"]["splits"]
    assert splits["judged_on"] == "half of the given validation rows"
    assert (splits["search_train_rows"], splits["search_validation_rows"],
            splits["selection_rows"], meta["validation_examples"]) == (4, 10, 10, 10)
    assert meta["validation_source"] == "given"


def _search_until_a_trial_finished(api: TestClient, keep: bool) -> tuple[dict[str, Any], str]:
    config = {**QUICK, "epochs": 2, "search": {
        "trials": 500, "budget_s": 3600, "keep_best_on_cancel": keep,
        "space": {"epochs": [2, 3], "designs": ["pfeiffer"]}}}
    job = submit_job(api, name="cut", config=config, rows=200)

    def one_complete(j: dict[str, Any]) -> bool:
        return any(t["state"] == "complete" for t in (j["search"] or {}).get("trials", []))

    wait_for_job(api, job["job_id"], ("running",), predicate=one_complete)
    assert api.delete(f"/jobs/{job['job_id']}").json()["cancel_requested"] is True
    return wait_for_job(api, job["job_id"], ("cancelled", "succeeded", "failed"), timeout=60), \
        job["job_id"]


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_cancel_mid_search_keeps_the_best_trial_only_if_asked(
        train_settings: Settings, keep: bool) -> None:
    from app.main import create_app

    patient = train_settings.model_copy(update={"cancel_grace_seconds": 600})
    with TestClient(create_app(patient)) as api:
        done, _ = _search_until_a_trial_finished(api, keep)
        versions = AdapterStore(train_settings.adapters_dir).versions("cut")
        if not keep:
            assert done["status"] == "cancelled" and "nothing was stored" in done["error"]
            assert versions == []
            return
        assert done["status"] == "succeeded", done["error"]
        assert versions == [1] and done["result"]["search"]["cancelled"] is True
        stored = api.get("/adapters/cut").json()["metrics"]["search"]
        complete = [t for t in stored["trials"] if t["state"] == "complete"]
        assert stored["winner"] == max(complete, key=lambda t: t["score"])["number"]

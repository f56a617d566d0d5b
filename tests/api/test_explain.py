"""Explanations through the API: the JSON a console shades words with, per task type; a request
mixing explained and plain inputs; explained and plain requests batched together; bad options."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.adapters.store import AdapterStore
from app.config import Settings
from app.main import create_app
from app.model.adapter import AdapterConfig
from app.tasks import HeadConfig
from tests.conftest import AdapterFactory

PREDICTION_FIELDS = {"label", "score", "scores"}


def _check_words(explained: dict[str, Any], texts: dict[str, str]) -> None:
    """Every attribution names a word of the text it points into; they add up."""
    words = explained["attributions"]
    assert words and all(texts[w["source"]][w["start"]:w["end"]] == w["text"] for w in words)
    e = explained["explanation"]
    assert e["steps"] >= 1
    change = e["output"] - e["baseline"]
    assert sum(w["score"] for w in words) == pytest.approx(change + e["delta"], abs=1e-5)
    assert abs(e["delta"]) <= 0.05 * abs(change) + 1e-6


def test_explained_predictions_carry_word_attributions(served: TestClient) -> None:
    inputs = ["the film was goodish", {"text": "bad movie", "text_pair": "it was slow"}]
    plain = served.post("/predict/sentiment", json={"inputs": inputs}).json()["predictions"]
    r = served.post("/predict/sentiment", json={"inputs": inputs, "explain": True})
    assert r.status_code == 200, r.text
    explained = r.json()["predictions"]
    for p, x, item in zip(plain, explained, inputs, strict=True):
        assert set(p) == PREDICTION_FIELDS  # a plain prediction has no explanation fields
        assert x["label"] == p["label"]  # the same prediction
        assert x["scores"] == pytest.approx(p["scores"], abs=1e-6)
        assert x["explanation"]["label"] == x["label"]  # the predicted label ...
        assert x["explanation"]["output"] == pytest.approx(x["score"], abs=1e-5)  # ... its score
        assert x["explanation"]["steps"] == 16
        _check_words(x, {"text": item} if isinstance(item, str) else item)
    assert [w["text"] for w in explained[0]["attributions"]] == ["the", "film", "was", "goodish"]
    assert [(w["source"], w["text"]) for w in explained[1]["attributions"]] == [
        ("text", "bad"), ("text", "movie"), ("text_pair", "it"), ("text_pair", "was"),
        ("text_pair", "slow")]


def test_a_request_mixes_explained_and_plain_inputs(served: TestClient) -> None:
    inputs = ["the film was good", {"text": "bad", "explain": True}, {"text": "fun"}]
    got = served.post("/predict/sentiment", json={"inputs": inputs}).json()["predictions"]
    assert ["attributions" in p for p in got] == [False, True, False]
    inputs[2] = {"text": "fun", "explain": False}
    body = {"inputs": inputs, "explain": True, "explain_label": "neg", "explain_steps": 8}
    got = served.post("/predict/sentiment", json=body).json()["predictions"]
    assert ["attributions" in p for p in got] == [True, True, False]
    for p in got[:2]:
        e = p["explanation"]
        assert (e["label"], e["steps"]) == ("neg", 8)
        assert e["output"] == pytest.approx(p["scores"]["neg"], abs=1e-5)


def test_a_value_is_explained(served: TestClient) -> None:
    item = {"text": "a plane is taking off", "text_pair": "an air plane is taking off"}
    (p,) = served.post("/predict/similarity", json={"inputs": [item], "explain": True}
                       ).json()["predictions"]
    assert "label" not in p["explanation"]
    assert p["explanation"]["output"] == pytest.approx(p["value"], abs=1e-5)
    _check_words(p, item)


def test_entities_and_answers_are_explained(store: AdapterStore, make_adapter: AdapterFactory,
                                            client: TestClient) -> None:
    make_adapter(store, "ner", seed=4, head=HeadConfig(
        task_type="token_classification", labels=["O", "B-PER", "I-PER"]))
    make_adapter(store, "qa", seed=5, head=HeadConfig(task_type="question_answering"))
    client.post("/adapters/reload")
    text = "john visited paris and mary works at acme corp"
    (p,) = client.post("/predict/ner", json={"inputs": text, "explain": True}).json()["predictions"]
    assert p["entities"], "the random head found no entity to explain"
    for entity in p["entities"]:
        assert entity["explanation"]["label"] == entity["label"]
        assert entity["explanation"]["output"] == pytest.approx(entity["score"], abs=1e-5)
        _check_words(entity, {"text": text})
    item = {"question": "who visited paris ?", "context": text}
    (a,) = client.post("/predict/qa", json={"inputs": [item], "explain": True}
                       ).json()["predictions"]
    assert {w["source"] for w in a["attributions"]} == {"question", "context"}
    assert a["explanation"]["output"] == pytest.approx(a["score"], rel=1e-3)
    _check_words(a, item)


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"explain_steps": 0}, "validation_error", ["explain_steps"]),
    ({"explain_steps": 65}, "invalid_input", ["explain_steps", "65", "64 (EXPLAIN_MAX_STEPS)"]),
    ({"explain_label": "meh"}, "invalid_input", ["explain_label", "'meh'", "['neg', 'pos']"]),
    ({"explain_label": ""}, "validation_error", ["explain_label"]),
    ({"explain": "maybe"}, "validation_error", ["explain"]),
    ({"explain_tolerance": -0.1}, "validation_error", ["explain_tolerance"]),
    ({"explain_tolerance": 2}, "validation_error", ["explain_tolerance"]),
])
def test_bad_options_are_refused_naming_the_field(served: TestClient, body: dict, code: str,
                                                  words: list[str]) -> None:
    r = served.post("/predict/sentiment", json={"inputs": ["x"], "explain": True, **body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and all(w in error["message"] for w in words), error


def test_steps_double_until_the_delta_is_within_the_tolerance(served: TestClient) -> None:
    def explain(**options: Any) -> dict[str, Any]:
        r = served.post("/predict/sentiment", json={
            "inputs": ["the film was not very good, it was slow"], "explain": True, **options})
        assert r.status_code == 200, r.text
        e: dict[str, Any] = r.json()["predictions"][0]["explanation"]
        return e

    def points() -> float:  # adapter_serve_explain_points_total
        (line,) = [x for x in served.get("/metrics").text.splitlines()
                   if x.startswith("adapter_serve_explain_points_total ")]
        return float(line.split()[1])

    before = points()
    coarse = explain(explain_steps=1, explain_tolerance=0)  # exactly one step: the trapezoid
    assert coarse["steps"] == 1
    assert points() - before == 2  # its two ends
    change = coarse["output"] - coarse["baseline"]
    assert abs(coarse["delta"]) > 0.001 * abs(change), "one step was exact: nothing to refine"
    before = points()
    fine = explain(explain_steps=1, explain_tolerance=0.001)
    assert fine["steps"] in (2, 4, 8, 16, 32, 64) and fine["steps"] > 1
    assert points() - before == fine["steps"] + 1  # each point of the last rule, once
    assert abs(fine["delta"]) <= 0.001 * abs(change) or fine["steps"] == 64
    assert (fine["output"], fine["baseline"]) == pytest.approx(
        (coarse["output"], coarse["baseline"]), abs=1e-6)


def test_a_label_is_refused_where_there_are_none(served: TestClient) -> None:
    r = served.post("/predict/similarity", json={"inputs": ["x"], "explain_label": "pos"})
    assert r.status_code == 422
    assert "explain_label is for classification" in r.json()["error"]["message"]


def test_explained_and_plain_requests_batched_together_get_what_each_gets_alone(
        store: AdapterStore, make_adapter: AdapterFactory, settings: Settings) -> None:
    make_adapter(store, "bottleneck", seed=1)
    make_adapter(store, "lora", seed=2, config=AdapterConfig(method="lora"))
    texts = ["the film was good", "john visited paris", "not very fun at all", "bad"]
    jobs = [(task, text, explain) for task in ("bottleneck", "lora") for text in texts
            for explain in (False, True)]

    def answer(c: TestClient, job: tuple[str, str, bool]) -> dict[str, Any]:
        task, text, explain = job
        r = c.post(f"/predict/{task}", json={"inputs": text, "explain": explain})
        assert r.status_code == 200, r.text
        prediction: dict[str, Any] = r.json()["predictions"][0]
        return prediction

    # a small heavy pass budget: explanations are cut into several chunks, passes are mixed
    with TestClient(create_app(settings.model_copy(update={"explain_batch_tokens": 40}))) as c:
        alone = [answer(c, job) for job in jobs]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda job: answer(c, job), jobs))
    for a, b in zip(alone, together, strict=True):
        assert set(a) == set(b) and a["scores"] == pytest.approx(b["scores"], abs=1e-5)
        if "attributions" in a:
            assert [w["score"] for w in a["attributions"]] == pytest.approx(
                [w["score"] for w in b["attributions"]], abs=1e-5)

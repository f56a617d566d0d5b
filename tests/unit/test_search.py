"""The adapter search on the tiny BERT: it keeps its budget, records and prunes trials, repeats
itself from its seed, stores one adapter, and a cancel stores nothing unless asked."""

from __future__ import annotations

from typing import Any

import pytest

from app.adapters.store import AdapterStore
from app.model.adapter import AdapterConfig
from app.model.cost import adapter_parameters, relative_cost
from app.model.encoder import FrozenEncoder
from app.tasks import get_task
from app.training.choice import TrialRecord, choose
from app.training.config import SearchConfig, TrainConfig
from app.training.data import TrainingData, prepare
from app.training.loop import Progress, TrainingCancelled, train_adapter
from app.training.search import search_and_train
from app.training.space import resolve_space
from app.training.worker import train_and_store
from tests.unit.test_training_loop import sentiment_rows

SPACE = {"epochs": [1, 3], "learning_rate": [1e-4, 5e-2]}


def _data(n: int = 96) -> TrainingData:
    return prepare("classification", sentiment_rows(n), None, None, 0.25, 0, 10_000, 1_000)


def _config(**search: Any) -> TrainConfig:
    return TrainConfig(batch_size=8, base_dropout=False,
                       search={"trials": 6, "budget_s": 3600, "space": SPACE, **search})


class StepClock:
    """A clock that moves one second per training step: budgets in steps, not in wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, _: Progress) -> None:
        self.now += 1.0


def test_every_trial_is_recorded_and_one_adapter_is_stored(encoder: FrozenEncoder,
                                                           tmp_path: Any) -> None:
    store = AdapterStore(tmp_path)
    tables: list[dict[str, Any]] = []
    stored, result = train_and_store(encoder, store, "picked", _data(), _config(),
                                     on_search=tables.append)
    assert store.versions("picked") == [1]  # exactly one adapter, whatever the trial count
    search = stored.metrics["search"]
    assert [t["number"] for t in search["trials"]] == list(range(6))
    for t in search["trials"]:
        assert t["state"] in ("complete", "pruned", "failed")
        assert {"config", "seconds", "trainable_parameters", "relative_cost", "curve"} <= set(t)
    assert search["space"]["epochs"] == [1, 3] and search["seed"] == 42
    assert search["splits"]["search_train_rows"] + search["splits"]["search_validation_rows"] \
        == stored.metrics["train_examples"]  # the job's validation split judged no trial
    first = search["trials"][0]["config"]  # the starting recipe: the task type's defaults
    assert (first["learning_rate"], first["epochs"], first["head_layers"]) == (1e-3, 3, 2)
    winner = next(t for t in search["trials"] if t["number"] == search["winner"])
    assert winner["state"] == "complete"
    assert search["why"].startswith(("highest validation score", "kept the starting recipe"))
    assert stored.metrics["config"]["epochs"] == winner["config"]["epochs"]
    assert stored.metrics["config"]["search"] is None
    assert result.history and [r["epoch"] for r in result.history][0] == 1
    # the live table grew trial by trial and ended naming the winner
    assert len(tables[0]["trials"]) == 0 and tables[-2]["phase"] == "final training"
    assert tables[-1] == search


def test_trials_are_pruned_on_the_per_epoch_score(encoder: FrozenEncoder) -> None:
    out = search_and_train(encoder, _data(), _config(trials=8, space={
        "epochs": [3, 3], "learning_rate": [1e-6, 5e-2]}))
    trials = out.record["trials"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all("stopped_by" not in t and "score" not in t for t in pruned)
    # judged from epoch 2 on (not at epoch 1), stopped before the last; the first two never
    assert all(len(t["curve"]) == 2 for t in pruned)
    assert {t["number"] for t in pruned}.isdisjoint({0, 1})
    assert out.record["winner"] not in [t["number"] for t in pruned]


def test_same_seed_same_trials(encoder: FrozenEncoder) -> None:
    def trials(seed: int) -> list[tuple[Any, ...]]:
        out = search_and_train(encoder, _data(), _config(trials=5, seed=seed))
        return [(t["params"], t["state"], t.get("score"), t["curve"])
                for t in out.record["trials"]]

    first = trials(3)
    assert trials(3) == first
    assert [p for p, *_ in trials(4)] != [p for p, *_ in first]


def test_budget_is_kept_within_one_epoch(encoder: FrozenEncoder) -> None:
    clock = StepClock()
    data = _data()
    budget = 150.0
    out = search_and_train(encoder, data, _config(trials=50, budget_s=budget),
                           on_progress=clock.tick, clock=clock)
    record = out.record
    steps_per_epoch = -(-len(data.train) // 8)  # the final training's epochs are the longest
    assert record["elapsed_seconds"] == clock.now
    assert clock.now <= budget + steps_per_epoch
    assert record["stop_reason"] == "budget" and len(record["trials"]) < 50
    assert record["winner"] is not None


def test_progress_spans_the_whole_search_and_keeps_up_with_its_budget(
        encoder: FrozenEncoder) -> None:
    clock = StepClock()
    seen: list[tuple[float, Progress]] = []

    def on_progress(p: Progress) -> None:
        seen.append((clock.now, p))
        clock.tick(p)

    budget = 150.0
    out = search_and_train(encoder, _data(), _config(trials=50, budget_s=budget),
                           on_progress=on_progress, clock=clock)
    assert len(out.record["trials"]) > 2
    # one count of steps over every trial and the final training, and the search's seconds
    assert [p.step for _, p in seen] == list(range(1, len(seen) + 1))
    assert all(p.elapsed == now for now, p in seen)
    for now, p in seen:  # a new trial does not send it back: it is never behind the clock
        assert now / budget - 0.01 <= p.fraction <= 1
        assert p.eta_seconds is not None and p.eta_seconds <= max(0.0, budget - now) + 1.5
    assert seen[-1][1].fraction > 0.95


def test_a_trial_cut_by_the_budget_counts_with_the_epochs_it_had(
        encoder: FrozenEncoder) -> None:
    clock = StepClock()
    out = search_and_train(encoder, _data(), _config(budget_s=1.0),
                           on_progress=clock.tick, clock=clock)
    [trial] = out.record["trials"]  # no second trial fits
    assert (trial["state"], trial["stopped_by"], len(trial["curve"])) == ("complete", "budget", 1)
    assert trial["config"]["epochs"] == 1 and trial["params"]["epochs"] == 3  # cut from 3
    assert out.record["winner"] == 0 and "score" in trial
    assert (out.config.epochs, out.config.learning_rate) == (1, 1e-3)  # retrained as it ran


def _given(n_train: int = 64, n_validation: int = 32) -> TrainingData:
    return prepare("classification", sentiment_rows(n_train), sentiment_rows(n_validation, 7),
                   None, 0.25, 0, 10_000, 1_000)


def test_given_validation_rows_judge_trials_and_the_winner_is_kept(
        encoder: FrozenEncoder, tmp_path: Any) -> None:
    data = _given()
    epochs: list[dict[str, Any]] = []
    store = AdapterStore(tmp_path)
    stored, result = train_and_store(encoder, store, "given", data, _config(trials=4),
                                     on_epoch=epochs.append)
    search = stored.metrics["search"]
    splits = search["splits"]
    # trials train on every training row; half the validation rows judge them, the other
    # half picks each trial's epoch
    assert splits["judged_on"] == "half of the given validation rows"
    assert splits["search_train_rows"] == len(data.train) == stored.metrics["train_examples"]
    assert splits["search_validation_rows"] == splits["selection_rows"] == 16
    assert stored.metrics["validation_examples"] == 16
    assert splits["final"].startswith("the winning trial as it was")
    # no final training: the stored model is the winner's, its epoch the best on the other half
    assert all(r["trial"] != "final" for r in epochs)
    winner = next(t for t in search["trials"] if t["number"] == search["winner"])
    mine = [r for r in epochs if r["trial"] == winner["number"]]
    assert [r["epoch"] for r in result.history] == [r["epoch"] for r in mine]
    task = get_task("classification")
    assert result.best_epoch == max(result.history,
                                    key=lambda r: task.score(r["selection"]))["epoch"]
    assert stored.metrics["validation"]["accuracy"] \
        == result.history[result.best_epoch - 1]["selection"]["accuracy"]
    # a trial's score is its best epoch on the judging half, whatever epoch the other half keeps
    for t in search["trials"]:
        if t["state"] == "complete":
            curve = [r["accuracy"] for r in epochs if r["trial"] == t["number"]]
            assert t["score"] == max(curve) and t["metrics"]["accuracy"] == max(curve)
    assert stored.metrics["config"]["epochs"] == winner["config"]["epochs"]


def test_too_few_validation_rows_to_halve_leave_the_judging_to_training_rows(
        encoder: FrozenEncoder) -> None:
    data = _given(n_validation=3)
    out = search_and_train(encoder, data, _config(trials=2))
    splits = out.record["splits"]
    assert splits["judged_on"] == "a held-out 0.2 of the training rows (the 3 validation " \
        "rows sent are too few to halve)"
    assert splits["search_train_rows"] + splits["search_validation_rows"] == len(data.train)
    assert "selection_rows" not in splits and splits["final"].startswith("retrained")
    assert out.validation_examples is None


def test_select_rows_pick_the_kept_epoch_and_validation_rows_stop_early(
        encoder: FrozenEncoder) -> None:
    from tests.unit.test_training_loop import FAST

    data = _given()
    select = prepare("classification", sentiment_rows(24, 9), None, None, 0.25, 0, 10_000,
                     1_000).train
    config = FAST.model_copy(update={"patience": 1})
    plain = train_adapter(encoder, data, config)
    picked = train_adapter(encoder, data, config, select=select)
    # the same training (same seed): the same per-epoch validation scores and stopping epoch
    assert [r["accuracy"] for r in picked.history] == [r["accuracy"] for r in plain.history]
    assert picked.stop_reason == plain.stop_reason == "early stopping"
    task = get_task("classification")
    assert picked.best_epoch == max(picked.history,
                                    key=lambda r: task.score(r["selection"]))["epoch"]
    assert picked.best_metrics["accuracy"] \
        == picked.history[picked.best_epoch - 1]["selection"]["accuracy"]
    assert "selection" not in picked.best_metrics and "selection" not in plain.history[0]


def _cancel_after_first_complete() -> tuple[list[bool], Any, Any]:
    flag = [False]

    def on_search(table: dict[str, Any]) -> None:
        if any(t["state"] == "complete" for t in table["trials"]):
            flag[0] = True

    return flag, on_search, lambda: flag[0]


def test_cancel_mid_search_stores_nothing(encoder: FrozenEncoder, tmp_path: Any) -> None:
    store = AdapterStore(tmp_path)
    _, on_search, should_stop = _cancel_after_first_complete()
    with pytest.raises(TrainingCancelled):
        train_and_store(encoder, store, "cut", _data(), _config(), on_search=on_search,
                        should_stop=should_stop)
    assert store.versions("cut") == []


def test_cancel_with_keep_best_stores_the_best_finished_trial(encoder: FrozenEncoder,
                                                             tmp_path: Any) -> None:
    store = AdapterStore(tmp_path)
    _, on_search, should_stop = _cancel_after_first_complete()

    def refuse() -> None:
        raise TrainingCancelled()  # what the worker's check says once a cancel is asked

    stored, _ = train_and_store(encoder, store, "kept", _data(),
                                _config(keep_best_on_cancel=True), before_save=refuse,
                                on_search=on_search, should_stop=should_stop)
    assert store.versions("kept") == [1]
    search = stored.metrics["search"]
    assert search["cancelled"] is True and search["stop_reason"] == "cancelled"
    complete = [t for t in search["trials"] if t["state"] == "complete"]
    assert search["winner"] == max(complete, key=lambda t: t["score"])["number"]
    assert search["trials"][-1]["state"] == "cancelled"


def _trial(number: int, score: float, cost: float, params: int) -> TrialRecord:
    return TrialRecord(number, {}, {}, params, cost, "complete", score, 0.0)


def test_balanced_picks_the_cheapest_within_one_standard_error() -> None:
    trials = [_trial(0, 0.90, 1.10, 9000), _trial(1, 0.88, 1.02, 2000),
              _trial(2, 0.80, 1.01, 1000), _trial(3, 0.89, 1.05, 5000),
              TrialRecord(4, {}, {}, 10, 1.0, "pruned")]
    se = get_task("classification").standard_error
    quality = choose(trials, "quality", lambda s: se(s, 100))
    balanced = choose(trials, "balanced", lambda s: se(s, 100))
    assert quality.winner == 0
    assert balanced.standard_error == pytest.approx(0.03, abs=1e-5)
    assert balanced.winner == 1  # 0.88 >= 0.90 - 0.03, and the cheapest such
    assert "within one standard error" in balanced.why
    assert balanced.pareto == [2, 1, 3, 0]  # cheapest first; the pruned trial is not on it
    assert choose(trials, "balanced", lambda s: 0.0).winner == 0


def test_quality_keeps_the_starting_recipe_unless_clearly_beaten() -> None:
    se = get_task("classification").standard_error
    trials = [_trial(0, 0.80, 1.02, 2000), _trial(1, 0.84, 1.10, 9000), _trial(2, 0.70, 1.0, 10)]
    # 0.04 ahead on 400 rows: within 1.645 * sqrt(se(0.84)^2 + se(0.80)^2) = 0.0446
    kept = choose(trials, "quality", lambda s: se(s, 400), start=0)
    assert kept.winner == 0 and kept.why.startswith("kept the starting recipe (trial 0")
    assert "leads it by 0.0400" in kept.why and "0.0446" in kept.why
    clear = choose(trials, "quality", lambda s: se(s, 1600), start=0)  # half the noise
    assert clear.winner == 1 and "0.0400 over the starting recipe" in clear.why
    # no starting recipe among the trials (or it did not finish): the best score
    assert choose(trials, "quality", lambda s: se(s, 400)).winner == 1
    trials[0].state = "pruned"
    assert choose(trials, "quality", lambda s: se(s, 400), start=0).winner == 1


def test_cost_model_and_task_aware_space(encoder: FrozenEncoder) -> None:
    dims = encoder.info.dims
    pfeiffer, houlsby = AdapterConfig(bottleneck_size=4), AdapterConfig(bottleneck_size=4,
                                                                       placement="houlsby")
    assert relative_cost(houlsby, dims) - 1 == pytest.approx(2 * (relative_cost(pfeiffer, dims) - 1))
    assert adapter_parameters(pfeiffer, dims) == 2 * (4 * 32 * 2 + 4 + 32)
    assert relative_cost(AdapterConfig(method="lora", r=2), dims) > 1
    sentence, ner = resolve_space("classification"), resolve_space("token_classification")
    assert sentence.learning_rate == (2.5e-4, 4e-3) and sentence.epochs == (2, 6)
    assert ner.learning_rate == (5e-4, 8e-3) and ner.epochs == (4, 10)
    assert (sentence.default_head_layers, ner.default_head_layers) == (2, 1)
    assert resolve_space("question_answering").head_layers == ()  # its head has one depth
    assert SearchConfig().space.designs is None  # the defaults above fill it


def test_cli_train_with_search(tiny_model_dir: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from app.cli import main
    from app.config import get_settings

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in sentiment_rows(64)))
    for name, value in {"BASE_MODEL": str(tiny_model_dir), "ADAPTERS_DIR": str(tmp_path / "s"),
                        "TRAIN_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        code = main(["train", "--name", "cli", "--data", str(rows), "--config-json",
                     '{"batch_size": 8}', "--search",
                     '{"trials": 2, "budget_s": 600, "space": {"epochs": [1, 1]}}'])
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        assert out["version"] == 1 and out["search"]["winner"] in (0, 1)
        assert out["config"]["epochs"] == 1
        assert main(["train", "--name", "cli", "--data", str(rows), "--search",
                     '{"trials": 0}']) == 2
        assert "trials" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("task_type", ["token_classification", "question_answering",
                                       "regression"])
def test_every_task_type_can_be_searched(encoder: FrozenEncoder, task_type: str) -> None:
    from tests.unit.test_ner import ner_rows
    from tests.unit.test_qa import qa_rows

    rows = {"token_classification": lambda: ner_rows(48), "question_answering": lambda: qa_rows(48),
            "regression": lambda: [{**r, "label": float(r["label"] == "pos")}
                                   for r in sentiment_rows(48)]}[task_type]()
    data = prepare(task_type, rows, None, None, 0.25, 0, 10_000, 1_000)
    out = search_and_train(encoder, data, _config(trials=3, space={"epochs": [1, 2]}))
    assert len(out.record["trials"]) == 3 and out.record["winner"] is not None
    assert all(t["state"] != "failed" for t in out.record["trials"]), out.record["trials"]

"""The training loop on the tiny BERT: it learns, keeps the base intact, is deterministic."""

from __future__ import annotations

import random

import pytest
import torch

from app.adapters.store import AdapterStore
from app.model.encoder import FrozenEncoder
from app.training.config import TrainConfig
from app.training.data import TrainingData, prepare
from app.training.loop import TrainingCancelled, length_batches, train_adapter
from app.training.worker import train_and_store

POS = ["good", "great", "fun", "love", "happy"]
NEG = ["bad", "awful", "boring", "hate", "sad"]
FILL = ["the", "film", "movie", "was", "it", "very", "this", "today", "and"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Texts whose label is given by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILL, 4) + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


FAST = TrainConfig(epochs=8, learning_rate=3e-2, batch_size=8, bottleneck_size=16, patience=8,
                   warmup_ratio=0.0, base_dropout=False, head_dropout=0.0)


def _data(n: int = 128, task: str = "classification") -> TrainingData:
    rows = sentiment_rows(n)
    if task == "regression":
        rows = [{**r, "label": 4.0 if r["label"] == "pos" else 1.0} for r in rows]
    return prepare(task, rows, None, None, 0.25, 0, 10_000, 1_000)


def test_classifier_learns_and_best_epoch_is_kept(encoder: FrozenEncoder) -> None:
    epochs = []
    result = train_adapter(encoder, _data(), FAST, on_epoch=epochs.append)
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    assert epochs[0]["accuracy"] <= 0.75  # it starts near chance ...
    assert result.best_metrics["accuracy"] >= 0.85  # ... and learns the sentiment words
    assert result.best_metrics["accuracy"] == max(e["accuracy"] for e in epochs)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert result.examples_seen == 8 * 96


def test_regression_learns(encoder: FrozenEncoder) -> None:
    result = train_adapter(encoder, _data(task="regression"), FAST)
    assert result.best_metrics["pearson"] > 0.7
    assert set(result.best_metrics) >= {"mse", "pearson", "spearman"}


def test_base_weights_are_bit_identical_after_training(encoder: FrozenEncoder) -> None:
    before = {n: p.detach().clone() for n, p in encoder.model.state_dict().items()}
    train_adapter(encoder, _data(), FAST.model_copy(update={"epochs": 2, "base_dropout": True}))
    after = encoder.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not encoder.model.training  # left in eval mode for serving


def test_same_seed_same_adapter(encoder: FrozenEncoder) -> None:
    config = FAST.model_copy(update={"epochs": 2, "base_dropout": True, "head_dropout": 0.1})
    a = train_adapter(encoder, _data(), config)
    b = train_adapter(encoder, _data(), config)
    c = train_adapter(encoder, _data(), config.model_copy(update={"seed": 7}))
    for k, v in a.adapter.state_dict().items():
        assert torch.equal(v, b.adapter.state_dict()[k]), k
    assert any(not torch.equal(v, c.adapter.state_dict()[k])
               for k, v in a.adapter.state_dict().items())


def test_early_stopping_and_time_limit(encoder: FrozenEncoder) -> None:
    stale = train_adapter(encoder, _data(), FAST.model_copy(
        update={"epochs": 30, "learning_rate": 1e-9, "patience": 1}))
    assert stale.stop_reason == "early stopping" and len(stale.history) == 2
    capped = train_adapter(encoder, _data(), FAST.model_copy(
        update={"epochs": 1000, "max_train_seconds": 0.3}))
    assert capped.stop_reason == "time limit" and len(capped.history) < 1000
    # on_epoch returning True (a search's budget) ends it there, keeping the best epoch so far
    seen: list[int] = []
    stopped = train_adapter(encoder, _data(), FAST.model_copy(update={"epochs": 5}),
                            on_epoch=lambda r: seen.append(r["epoch"]) or r["epoch"] == 2)
    assert stopped.stop_reason == "stopped" and seen == [1, 2] and stopped.best_epoch <= 2


def test_cancel_stops_training_and_stores_nothing(encoder: FrozenEncoder, store: AdapterStore
                                                  ) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingCancelled):
        train_and_store(encoder, store, "t", _data(), FAST, should_stop=stop)
    assert store.versions("t") == []


def test_trained_adapter_is_stored_with_its_metrics(encoder: FrozenEncoder, store: AdapterStore
                                                    ) -> None:
    stored, result = train_and_store(encoder, store, "t", _data(),
                                     FAST.model_copy(update={"epochs": 2}))
    assert (stored.name, stored.version, stored.labels) == ("t", 1, ["neg", "pos"])
    assert stored.metrics["best_epoch"] == result.best_epoch
    assert stored.metrics["validation"]["accuracy"] == result.best_metrics["accuracy"]
    assert stored.metrics["validation_source"] == "split of train"
    loaded = store.load("t", 1, encoder.info)
    for k, v in result.adapter.state_dict().items():
        assert torch.equal(loaded.adapter[k], v)


def test_length_batches_cover_everything_once_with_little_padding() -> None:
    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    batches = length_batches(lengths, 32, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)

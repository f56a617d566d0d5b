"""Multi-label classification: rows, targets, decoding at the threshold, metrics, training."""

from __future__ import annotations

import random

import pytest
import torch

from app.errors import InvalidInputError
from app.model.tokenization import Feature
from app.tasks import DecodeOptions, HeadConfig, build_head, get_task
from app.tasks.multi_label_classification import MultiLabelResult, multi_label_scores

TASK = get_task("multi_label_classification")
CUES = {"good": "positive", "john": "person", "paris": "place"}
FILLER = "the a film was it very and of in today".split()


def multi_label_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences whose labels are the cue words they contain (possibly none)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER, 4) + [w for w in CUES if rng.random() < 0.5]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": sorted(CUES[w] for w in CUES if w in words)})
    return rows


def test_rows_labels_and_targets() -> None:
    rows = [{"text": "good john", "labels": ["positive", "person"]}, {"text": "the", "labels": []},
            {"text": "paris", "text_pair": "a", "labels": ["place"]}]
    examples = TASK.read_rows(rows, "train", 100)
    labels = TASK.labels(examples, None)
    assert labels == ["person", "place", "positive"]
    assert TASK.targets(examples, labels, "train").targets == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert TASK.collate_targets([[1, 0, 1]], 5).dtype == torch.float32


@pytest.mark.parametrize(("rows", "message"), [
    ([{"text": "a", "label": "x"}], r"train\[0\] has no 'labels'"),
    ([{"text": "a", "labels": "x"}], r"train\[0\].labels must be a list"),
    ([{"text": "a", "labels": ["x", "x"]}], "has duplicates"),
    ([{"text": "a", "labels": [1.5]}], r"labels\[0\].label must be a string or integer"),
])
def test_bad_rows_name_the_field(rows: list[dict], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        TASK.read_rows(rows, "train", 100)


def test_no_label_anywhere_and_unknown_labels_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="no row of train has a label"):
        TASK.labels(TASK.read_rows([{"text": "a", "labels": []}], "train", 100), None)
    examples = TASK.read_rows([{"text": "a", "labels": ["z"]}], "validation", 100)
    with pytest.raises(InvalidInputError, match=r"validation\[0\].labels: 'z' is not one of"):
        TASK.targets(examples, ["x"], "validation")


def test_decode_keeps_every_label_over_the_threshold_most_probable_first() -> None:
    head = build_head(HeadConfig(task_type="multi_label_classification", labels=["a", "b", "c"]),
                      8)
    feature = Feature([2, 3], text="x")
    result = head.decode(torch.tensor([0.7, 0.2, 0.9]), feature, DecodeOptions())
    assert result == MultiLabelResult(["c", "a"], {"a": pytest.approx(0.7), "b": pytest.approx(0.2),
                                                   "c": pytest.approx(0.9)})
    probs = head.predict(torch.randn(2, 3, 8), torch.ones(2, 3))
    assert probs.shape == (2, 3) and bool(((probs > 0) & (probs < 1)).all())
    assert probs.sum(-1).max() > 0  # independent, not a softmax: rows need not sum to 1


def test_metrics() -> None:
    scores = multi_label_scores([[1, 0, 1], [0, 0, 0]], [[1, 1, 1], [0, 0, 0]])
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == 1.0
    assert scores["micro_f1"] == pytest.approx(0.8) and scores["exact_match"] == 0.5

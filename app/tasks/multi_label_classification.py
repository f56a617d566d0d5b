"""Multi-label classification: any number of labels per text or text pair, each scored on its
own (a sigmoid per label), scored by micro-averaged F1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from app.errors import InvalidInputError
from app.model.tokenization import Feature
from app.tasks.base import DecodeOptions, Examples, Head, Prediction, Target, TaskDefaults
from app.tasks.classification import check_given_labels, class_name
from app.tasks.sequence import (
    SentenceResult,
    SequenceHead,
    SequenceTask,
    check_text_rows,
    label_target,
)

THRESHOLD = 0.5  # a label is predicted when its probability reaches this


@dataclass(frozen=True)
class MultiLabelResult(SentenceResult):
    labels: list[str]  # every label at or over the threshold, most probable first
    scores: dict[str, float]  # every label's probability


class MultiLabelHead(SequenceHead):
    """Pooled sequence -> one logit per label; independent probabilities when serving."""

    def outputs(self) -> int:
        return len(self.config.labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, L)
        return self.features(hidden, attention_mask)

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return super().predict(hidden, attention_mask).sigmoid()

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        # targets (B, L) in {0, 1}; smoothing pulls them toward 1/2
        soft = targets.float() * (1 - label_smoothing) + 0.5 * label_smoothing
        return nn.functional.binary_cross_entropy_with_logits(outputs.float(), soft)

    def decode(self, output: Tensor, feature: Feature, options: DecodeOptions) -> MultiLabelResult:
        probs = output.tolist()
        scores = dict(zip(self.config.labels, probs, strict=True))
        chosen = sorted((name for name, p in scores.items() if p >= THRESHOLD),
                        key=lambda name: -scores[name])
        return MultiLabelResult(chosen, scores)


def multi_label_scores(gold: Sequence[Sequence[int]], pred: Sequence[Sequence[int]]
                       ) -> dict[str, float]:
    """Micro precision, recall and F1 over every (example, label) decision, and the share of
    examples whose whole label set is right (exact match)."""
    tp = fp = fn = exact = 0
    for g, p in zip(gold, pred, strict=True):
        tp += sum(a and b for a, b in zip(g, p, strict=True))
        fp += sum(b and not a for a, b in zip(g, p, strict=True))
        fn += sum(a and not b for a, b in zip(g, p, strict=True))
        exact += list(g) == list(p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"micro_f1": f1, "precision": precision, "recall": recall,
            "exact_match": exact / max(1, len(gold))}


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidInputError(f"{where}.labels must be a list of class names, got "
                                f"{type(value).__name__}")
    names = [class_name(v, f"{where}.labels[{j}]") for j, v in enumerate(value)]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"{where}.labels has duplicates: {names}")
    return names


class MultiLabelClassification(SequenceTask):
    name = "multi_label_classification"
    defaults = TaskDefaults(epochs=5, learning_rate=1e-3, max_seq_length=128)
    head_type = MultiLabelHead
    min_labels = 1
    explains_labels = True

    def read_rows(self, rows: list[Any], what: str, max_chars: int) -> Examples:
        """{"text", "text_pair"?, "labels": [names]} rows (an empty list: no label applies)."""
        examples = check_text_rows(rows, what, max_chars, target="labels")
        examples.targets = [_names(v, f"{what}[{i}]") for i, v in enumerate(examples.targets)]
        return examples

    def labels(self, train: Examples, given: list[str] | None) -> list[str]:
        seen = sorted({name for names in train.targets for name in names})
        check_given_labels(given)
        if not seen:
            raise InvalidInputError("no row of train has a label: a multi-label classifier needs "
                                    "examples of at least one label")
        return list(given) if given else seen

    def targets(self, examples: Examples, labels: list[str], what: str) -> Examples:
        index = {name: i for i, name in enumerate(labels)}
        out = []
        for i, names in enumerate(examples.targets):
            hot = [0] * len(labels)
            for name in _names(names, f"{what}[{i}]"):
                if name not in index:
                    raise InvalidInputError(f"{what}[{i}].labels: {name!r} is not one of the "
                                            f"labels {labels}")
                hot[index[name]] = 1
            out.append(hot)
        return Examples(examples.texts, examples.pairs, out)

    def collate_targets(self, targets: list[Any], length: int) -> Tensor:
        return torch.tensor(targets, dtype=torch.float32)  # (B, L)

    def evaluate(self, head: Head, outputs: list[Tensor], features: list[Feature],
                 examples: Examples, labels: list[str]) -> dict[str, float]:
        pred = (torch.stack(outputs) >= THRESHOLD).int().tolist()
        return multi_label_scores(examples.targets, pred)

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        return metrics["micro_f1"], metrics["exact_match"]

    def target(self, prediction: Prediction, labels: list[str], label: str | None) -> Target:
        """The most probable label's probability (whether or not it reaches the threshold)."""
        assert isinstance(prediction, MultiLabelResult)
        return label_target(prediction.scores, labels, label)


TASK = MultiLabelClassification()

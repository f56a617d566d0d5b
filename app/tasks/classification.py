"""Sequence classification: a label per text or text pair, scored by accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from app.errors import InvalidInputError
from app.model.tokenization import Feature
from app.tasks.base import DecodeOptions, Examples, Head, Prediction, Target, TaskDefaults
from app.tasks.sequence import SentenceResult, SequenceHead, SequenceTask, label_target


@dataclass(frozen=True)
class ClassificationResult(SentenceResult):
    label: str  # the most probable label
    score: float  # its probability
    scores: dict[str, float]  # every label's probability


class ClassificationHead(SequenceHead):
    """Pooled sequence -> one logit per label; probabilities when serving."""

    def outputs(self) -> int:
        return len(self.config.labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, L)
        return self.features(hidden, attention_mask)

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return super().predict(hidden, attention_mask).softmax(-1)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return nn.functional.cross_entropy(outputs.float(), targets, label_smoothing=label_smoothing)

    def decode(self, output: Tensor, feature: Feature, options: DecodeOptions
               ) -> ClassificationResult:
        probs = output.tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return ClassificationResult(self.config.labels[best], probs[best],
                                    dict(zip(self.config.labels, probs, strict=True)))


def class_name(value: Any, where: str) -> str:
    """A row's label as a class name: strings as they are, integers and booleans as text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | str):
        return str(value)
    raise InvalidInputError(f"{where}.label must be a string or integer class, got "
                            f"{type(value).__name__}")


def check_given_labels(given: list[str] | None) -> None:
    """The request's own label list, when it gives one: distinct, non-empty names."""
    if given is not None and (
            len(set(given)) != len(given) or not all(isinstance(x, str) and x for x in given)):
        raise InvalidInputError(f"labels must be distinct non-empty strings, got {given}")


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / max(1, len(gold))


def macro_f1(gold: Sequence[int], pred: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or pred."""
    scores = []
    for c in range(num_classes):
        tp = sum(g == c and p == c for g, p in zip(gold, pred, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, pred, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, pred, strict=True))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


class Classification(SequenceTask):
    name = "classification"
    defaults = TaskDefaults(epochs=3, learning_rate=1e-3, max_seq_length=128)
    head_type = ClassificationHead
    min_labels = 2
    explains_labels = True

    def labels(self, train: Examples, given: list[str] | None) -> list[str]:
        seen = list(dict.fromkeys(class_name(v, f"train[{i}]") for i, v in enumerate(train.targets)))
        check_given_labels(given)
        labels = list(given) if given else sorted(seen)
        if len(seen) < 2:
            raise InvalidInputError(f"train has only one class ({seen[0]!r}); a classifier needs "
                                    f"examples of at least two")
        return labels

    def targets(self, examples: Examples, labels: list[str], what: str) -> Examples:
        index = {name: i for i, name in enumerate(labels)}
        out = []
        for i, v in enumerate(examples.targets):
            name = class_name(v, f"{what}[{i}]")
            if name not in index:
                raise InvalidInputError(f"{what}[{i}].label {name!r} is not one of the labels "
                                        f"{labels}")
            out.append(index[name])
        return Examples(examples.texts, examples.pairs, out)

    def strata(self, targets: list[Any]) -> list[Any]:
        return targets

    def collate_targets(self, targets: list[Any], length: int) -> Tensor:
        return torch.tensor(targets, dtype=torch.long)  # (B,)

    def evaluate(self, head: Head, outputs: list[Tensor], features: list[Feature],
                 examples: Examples, labels: list[str]) -> dict[str, float]:
        pred = torch.stack(outputs).argmax(-1).tolist()
        return {"accuracy": accuracy(examples.targets, pred),
                "macro_f1": macro_f1(examples.targets, pred, len(labels))}

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        return metrics["accuracy"], metrics["macro_f1"]

    def target(self, prediction: Prediction, labels: list[str], label: str | None) -> Target:
        assert isinstance(prediction, ClassificationResult)
        return label_target(prediction.scores, labels, label)


TASK = Classification()

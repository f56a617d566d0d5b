"""Sequence regression: a number per text or text pair, scored by Pearson correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from app.errors import InvalidInputError
from app.model.tokenization import Feature
from app.tasks.base import DecodeOptions, Examples, Head, Prediction, Target, TaskDefaults
from app.tasks.sequence import SentenceResult, SequenceHead, SequenceTask

STRATA = 5  # value quantile bins: the validation split keeps the value range of train


@dataclass(frozen=True)
class RegressionResult(SentenceResult):
    value: float


class RegressionHead(SequenceHead):
    """Pooled sequence -> one value."""

    def outputs(self) -> int:
        return 1

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B,)
        return self.features(hidden, attention_mask).squeeze(-1)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return nn.functional.mse_loss(outputs.float(), targets.float())

    def decode(self, output: Tensor, feature: Feature, options: DecodeOptions) -> RegressionResult:
        return RegressionResult(float(output))


def mse(gold: Sequence[float], pred: Sequence[float]) -> float:
    return sum((g - p) ** 2 for g, p in zip(gold, pred, strict=True)) / max(1, len(gold))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    if n < 2:
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(ranks(x), ranks(y))


def _value(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}.label must be a number for regression, got "
                                f"{value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInputError(f"{where}.label must be a finite number, got {value!r}")
    return number


class Regression(SequenceTask):
    name = "regression"
    defaults = TaskDefaults(epochs=3, learning_rate=1e-3, max_seq_length=128)
    head_type = RegressionHead

    def labels(self, train: Examples, given: list[str] | None) -> list[str]:
        if given:
            raise InvalidInputError("labels are for classification; a regression adapter has none")
        return []

    def targets(self, examples: Examples, labels: list[str], what: str) -> Examples:
        values = [_value(v, f"{what}[{i}]") for i, v in enumerate(examples.targets)]
        return Examples(examples.texts, examples.pairs, values)

    def strata(self, targets: list[Any]) -> list[Any]:
        order = sorted(range(len(targets)), key=targets.__getitem__)
        strata = [0] * len(targets)
        for rank, i in enumerate(order):
            strata[i] = rank * STRATA // len(targets)
        return strata

    def collate_targets(self, targets: list[Any], length: int) -> Tensor:
        return torch.tensor(targets, dtype=torch.float32)  # (B,)

    def evaluate(self, head: Head, outputs: list[Tensor], features: list[Feature],
                 examples: Examples, labels: list[str]) -> dict[str, float]:
        pred = torch.stack(outputs).tolist()
        gold = examples.targets
        return {"mse": mse(gold, pred), "pearson": pearson(gold, pred),
                "spearman": spearman(gold, pred)}

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        return metrics["pearson"], -metrics["mse"]

    def standard_error(self, score: float, n: int) -> float:
        """Pearson's r: the large-sample standard error (1 - r^2) / sqrt(n - 1)."""
        r = min(1.0, max(-1.0, score))
        return (1 - r * r) / math.sqrt(max(1, n - 1))

    def target(self, prediction: Prediction, labels: list[str], label: str | None) -> Target:
        return Target()  # the value


TASK = Regression()

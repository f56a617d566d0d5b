"""Validation metrics: accuracy and macro-F1 (classification); MSE, Pearson, Spearman (regression)."""

from __future__ import annotations

import math
from collections.abc import Sequence


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


def classification_metrics(gold: Sequence[int], pred: Sequence[int], num_classes: int
                           ) -> dict[str, float]:
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, num_classes)}


def regression_metrics(gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    return {"mse": mse(gold, pred), "pearson": pearson(gold, pred), "spearman": spearman(gold, pred)}

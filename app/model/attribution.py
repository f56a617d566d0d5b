"""Integrated gradients on the input embeddings, batched: the quadrature, the path pass, the
baseline, and token scores merged into words."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from app.model.tokenization import Feature


@dataclass(frozen=True)
class WordScore:
    """One word's attribution: its sub-tokens' scores summed, where it stands in which text."""

    text: str
    source: str  # the input field its offsets point into: text, text_pair, question, context
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Explanation:
    """The attributions of one explained output, and how well they add up (completeness)."""

    attributions: list[WordScore]
    label: str | None  # the label explained (classification), the entity's type (NER)
    output: float  # f(input): the explained output
    baseline: float  # f(baseline): the same output with every word replaced by [PAD]
    delta: float  # sum of the attributions - (output - baseline): the approximation error
    steps: int


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of the Gauss-Legendre rule on [0, 1] (what Captum uses by default):
    exact for polynomials of degree < 2 * steps, so few steps reach a small delta."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return [float(a) for a in (nodes + 1) / 2], [float(w) for w in weights / 2]


def baseline_ids(feature: Feature, pad_id: int) -> list[int]:
    """The input with every word token replaced by [PAD]; special tokens ([CLS], [SEP]) stay,
    so the baseline is still a well-formed input of the same length (positions and token types
    unchanged) that says nothing."""
    return [t if s is None else pad_id for t, s in zip(feature.input_ids, feature.sequence_ids,
                                                       strict=True)]


def path_attributions(run: Callable[[Tensor], Tensor], start: Tensor, end: Tensor,
                      alphas: Tensor, weights: Tensor) -> Tensor:
    """Per row of a path batch, each output's quadrature term per token.

    Row n is the point start[n] + alphas[n] * (end[n] - start[n]) (embeddings (N, T, H)) of some
    input's straight path; `run` maps the points to K outputs per row (N, K). Returns
    weights[n] * dF_k/dx(point n) . (end[n] - start[n]) as (N, K, T): summed over the rows of
    one input, the integrated-gradients attribution of each token. Rows are independent (no
    operation of the encoder mixes rows), so one backward per output serves every row; the
    gradient is taken with respect to the points only, never to a parameter.
    """
    diff = end - start  # (N, T, H)
    point = (start + alphas.to(start.dtype).view(-1, 1, 1) * diff).detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = run(point)  # (N, K)
        count = outputs.shape[1]
        terms = []
        for k in range(count):  # K backwards over one forward: the graph is kept between them
            (grad,) = torch.autograd.grad(outputs[:, k], point,
                                          grad_outputs=weights.to(outputs.dtype),
                                          retain_graph=k + 1 < count)
            terms.append((grad.float() * diff.float()).sum(-1))  # (N, T)
    if not terms:
        return point.new_zeros((point.shape[0], 0, point.shape[1]), dtype=torch.float32)
    return torch.stack(terms, 1)


def word_scores(feature: Feature, token_scores: list[float]) -> list[WordScore]:
    """One entry per word of the input (sub-tokens merged), in input order; special tokens,
    whose embedding the baseline keeps, have none."""
    spans: dict[tuple[int, int], tuple[int, int]] = {}  # (text, word) -> characters
    scores: dict[tuple[int, int], float] = {}
    for i, (s, w) in enumerate(zip(feature.sequence_ids, feature.word_ids, strict=True)):
        if s is None or w is None:
            continue
        a, b = feature.offsets[i]
        start, end = spans.get((s, w), (a, b))
        spans[(s, w)] = min(start, a), max(end, b)
        scores[(s, w)] = scores.get((s, w), 0.0) + token_scores[i]
    out = []
    for (s, w), (a, b) in spans.items():
        source, text = feature.sources[s]
        out.append(WordScore(text[a:b], source, a, b, scores[(s, w)]))
    return out

"""Integrated gradients on the input embeddings, batched: the quadrature and its refinement, the
path pass, the baseline, and token scores merged into words."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

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
    baseline: float  # f(baseline): the same output with every word replaced by [MASK]
    delta: float  # sum of the attributions - (output - baseline): the approximation error
    steps: int  # the intervals of the rule that gave them (steps + 1 points on the path)


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of the Gauss-Legendre rule on [0, 1] (what Captum uses by default).
    Not nested, so the service refines with Clenshaw-Curtis; kept to check the path pass against
    Captum."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return [float(a) for a in (nodes + 1) / 2], [float(w) for w in weights / 2]


def clenshaw_curtis(steps: int) -> tuple[list[Fraction], list[float]]:
    """The Clenshaw-Curtis rule with `steps` intervals on [0, 1]: steps + 1 nodes, named by their
    angle (node k: a fraction k / steps of the half circle, see node_alpha), and their weights.

    Nested (the nodes of n steps are among those of 2n), so a refinement reuses every gradient
    already taken; both ends are nodes, so the path's own outputs give f(baseline) and f(input).
    Nearly as accurate as Gauss-Legendre with one point fewer on the integrands met here (17
    points 7.1% mean |delta| / |output - baseline|, Gauss-Legendre's 16 6.2%: docs/benchmarks.md)."""
    k = np.arange(steps + 1)
    j = np.arange(1, steps // 2 + 1)
    b = np.where(2 * j == steps, 1.0, 2.0) / (4.0 * j * j - 1)
    weights = (1 - np.cos(2 * np.pi * np.outer(k, j) / steps) @ b) / steps
    weights[1:-1] *= 2
    return [Fraction(int(i), steps) for i in k], [float(w) for w in weights / 2]


def node_alpha(node: Fraction) -> float:
    """Where a Clenshaw-Curtis node lies on the path: 0 at the baseline, 1 at the input."""
    return (1 - math.cos(math.pi * node)) / 2


def baseline_ids(feature: Feature, baseline_id: int) -> list[int]:
    """The input with every word token replaced by `baseline_id` ([MASK] where the vocabulary
    has one: the token BERT was trained to read as "a word, unknown"; else [PAD]); special
    tokens ([CLS], [SEP]) stay, so the baseline is still a well-formed input of the same length
    (positions and token types unchanged) that says nothing. From [MASK] the path's outputs
    change more smoothly than from [PAD]: fewer steps reach the same delta (measured)."""
    return [t if s is None else baseline_id for t, s in zip(feature.input_ids,
                                                            feature.sequence_ids, strict=True)]


def path_attributions(run: Callable[[Tensor], Tensor], start: Tensor, end: Tensor,
                      alphas: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of a path batch, each output's gradient term per token, and the outputs.

    Row n is the point start[n] + alphas[n] * (end[n] - start[n]) (embeddings (N, T, H)) of some
    input's straight path; `run` maps the points to K outputs per row (N, K). Returns
    (dF_k/dx(point n) . (end[n] - start[n]) as (N, K, T), F(points) as (N, K)): weighted by a
    quadrature rule and summed over the rows of one input, the integrated-gradients attribution
    of each token. Rows are independent (no operation of the encoder mixes rows), so one
    backward per output serves every row; the gradient is taken with respect to the points
    only, never to a parameter.
    """
    diff = end - start  # (N, T, H)
    point = (start + alphas.to(start.dtype).view(-1, 1, 1) * diff).detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = run(point)  # (N, K)
        count = outputs.shape[1]
        terms = []
        for k in range(count):  # K backwards over one forward: the graph is kept between them
            (grad,) = torch.autograd.grad(outputs[:, k], point,
                                          grad_outputs=torch.ones_like(outputs[:, k]),
                                          retain_graph=k + 1 < count)
            terms.append((grad.float() * diff.float()).sum(-1))  # (N, T)
    values = outputs.detach().float()
    if not terms:
        return point.new_zeros((point.shape[0], 0, point.shape[1]), dtype=torch.float32), values
    return torch.stack(terms, 1), values


class PathIntegral:
    """One input's integrated gradients while they are refined: the Clenshaw-Curtis points taken
    so far (per node: the gradient terms (K, T) and the outputs (K,)) and the rule's steps.

    The integral is known in advance (the outputs' change from the baseline to the input), so
    the error of each estimate is known too: the steps double, reusing every point, until each
    output's |delta| is within `tolerance` of its change."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.terms: dict[Fraction, Tensor] = {}
        self.outputs: dict[Fraction, Tensor] = {}

    def missing(self) -> list[Fraction]:
        """The nodes of the current rule not taken yet."""
        return [k for k in clenshaw_curtis(self.steps)[0] if k not in self.terms]

    def add(self, nodes: list[Fraction], terms: Tensor, outputs: Tensor) -> None:
        """Points taken: terms (S, K, T), outputs (S, K), one per node."""
        for i, node in enumerate(nodes):
            self.terms[node], self.outputs[node] = terms[i], outputs[i]

    def tokens(self) -> Tensor:
        """(K, T): each output's attribution per token under the current rule."""
        nodes, weights = clenshaw_curtis(self.steps)
        return sum((w * self.terms[k] for k, w in zip(nodes, weights, strict=True)),
                   torch.zeros_like(self.terms[nodes[0]]))

    def ends(self) -> tuple[Tensor, Tensor]:
        """(f(input), f(baseline)), (K,) each."""
        return self.outputs[Fraction(1)], self.outputs[Fraction(0)]

    def refine(self, tolerance: float, max_steps: int) -> bool:
        """Doubles the steps where an output's delta exceeds `tolerance` times its change (and
        2 * steps <= max_steps); whether it did. tolerance 0: never."""
        if tolerance <= 0 or 2 * self.steps > max_steps:
            return False
        output, baseline = self.ends()
        change = output - baseline
        delta = self.tokens().sum(-1) - change
        if bool((delta.abs() <= tolerance * change.abs()).all()):
            return False
        self.steps *= 2
        return True


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

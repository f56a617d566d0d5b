"""Explanations of predictions already made: the outputs to attribute, the integration steps as
heavy rows of the batcher (each within the heavy pass's token budget), the parts added up into
words."""

from __future__ import annotations

import torch

from app.adapters.index import Key
from app.model.attribution import Explanation, gauss_legendre, word_scores
from app.model.tokenization import Feature
from app.serving.batcher import Batcher
from app.serving.engine import Row
from app.serving.paths import ChunkResult, PathChunk
from app.tasks import DecodeOptions, Prediction, Task, TextInput
from app.tasks.base import ExplainOptions, Target


class Explainer:
    def __init__(self, batcher: Batcher[Row]) -> None:
        self.batcher = batcher

    async def explain(self, key: Key, task: Task, labels: list[str], inputs: list[TextInput],
                      features: list[Feature], rows: list[Prediction],
                      predictions: list[Prediction], options: ExplainOptions,
                      decode: DecodeOptions) -> list[Prediction]:
        """`predictions` (one per input) with the explanations of the inputs that ask for one;
        `rows` are the predictions per feature they were merged from."""
        targets = task.explain_targets(features, rows, [i.explain for i in inputs], labels,
                                       options.label, decode)
        chunks = [(n, chunk) for n, (f, ts) in enumerate(zip(features, targets, strict=True))
                  if ts for chunk in self._chunks(f, ts, options.steps)]
        if not chunks:
            return predictions
        parts = await self.batcher.submit([Row(key, features[n], decode, c) for n, c in chunks],
                                          heavy=True)
        found: list[list[ChunkResult]] = [[] for _ in features]
        for (n, _), part in zip(chunks, parts, strict=True):
            found[n].append(part)
        explanations = [combine(f, ts, got, options.steps) if got else []
                        for f, ts, got in zip(features, targets, found, strict=True)]
        return task.explained(predictions, features, explanations)

    def _chunks(self, feature: Feature, targets: list[Target], steps: int) -> list[PathChunk]:
        """The steps in as few chunks as the heavy pass's budget allows for this length."""
        alphas, weights = gauss_legendre(steps)
        per = max(1, self.batcher.limits.heavy_tokens // len(feature))
        return [PathChunk(tuple(targets), tuple(alphas[lo:lo + per]), tuple(weights[lo:lo + per]),
                          endpoints=lo == 0) for lo in range(0, steps, per)]


def combine(feature: Feature, targets: list[Target], parts: list[ChunkResult], steps: int
            ) -> list[Explanation]:
    """Per target: the chunks' token attributions added up and merged into words, and the
    completeness delta against the outputs at the endpoints."""
    tokens = torch.stack([p.tokens for p in parts]).sum(0)  # (K, T)
    ends = next(p for p in parts if p.output is not None)
    assert ends.output is not None and ends.baseline is not None
    out = []
    for k, target in enumerate(targets):
        scores = tokens[k].tolist()
        output, baseline = float(ends.output[k]), float(ends.baseline[k])
        out.append(Explanation(word_scores(feature, scores), target.name, output, baseline,
                               sum(scores) - (output - baseline), steps))
    return out

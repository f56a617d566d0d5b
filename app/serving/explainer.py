"""Explanations of predictions already made: the outputs to attribute, the points of each path as
heavy rows of the batcher (each within the heavy pass's token budget), refined where the delta
is too large, and the parts added up into words."""

from __future__ import annotations

from fractions import Fraction

from app import metrics
from app.adapters.index import Key
from app.model.attribution import Explanation, PathIntegral, node_alpha, word_scores
from app.model.tokenization import Feature
from app.serving.batcher import Batcher
from app.serving.engine import Row
from app.serving.paths import PathChunk
from app.tasks import DecodeOptions, Prediction, Task, TextInput
from app.tasks.base import ExplainOptions, Target


class Explainer:
    def __init__(self, batcher: Batcher[Row], tolerance: float, max_steps: int) -> None:
        self.batcher = batcher
        self.tolerance = tolerance  # EXPLAIN_TOLERANCE: when a request names none
        self.max_steps = max_steps  # EXPLAIN_MAX_STEPS: refinements stop there

    async def explain(self, key: Key, task: Task, labels: list[str], inputs: list[TextInput],
                      features: list[Feature], rows: list[Prediction],
                      predictions: list[Prediction], options: ExplainOptions,
                      decode: DecodeOptions) -> list[Prediction]:
        """`predictions` (one per input) with the explanations of the inputs that ask for one;
        `rows` are the predictions per feature they were merged from.

        Each explained feature's path starts with `options.steps` steps; the features whose
        delta exceeds the tolerance get their steps doubled (the points already taken are
        kept) in the next round, all such features of the request in one submission."""
        targets = task.explain_targets(features, rows, [i.explain for i in inputs], labels,
                                       options.label, decode)
        tolerance = self.tolerance if options.tolerance is None else options.tolerance
        paths = {n: PathIntegral(options.steps) for n, ts in enumerate(targets) if ts}
        todo = list(paths)
        while todo:
            chunks = [(n, nodes, chunk) for n in todo
                      for nodes, chunk in self._chunks(features[n], targets[n], paths[n])]
            parts = await self.batcher.submit([Row(key, features[n], decode, chunk)
                                               for n, _, chunk in chunks], heavy=True)
            metrics.EXPLAIN_POINTS.inc(sum(len(nodes) for _, nodes, _ in chunks))
            for (n, nodes, _), part in zip(chunks, parts, strict=True):
                paths[n].add(nodes, part.terms, part.outputs)
            todo = [n for n in todo if paths[n].refine(tolerance, self.max_steps)]
        for path in paths.values():
            metrics.EXPLAIN_STEPS.observe(path.steps)
        explanations = [combine(f, ts, paths[n]) if n in paths else []
                        for n, (f, ts) in enumerate(zip(features, targets, strict=True))]
        return task.explained(predictions, features, explanations)

    def _chunks(self, feature: Feature, targets: list[Target], path: PathIntegral
                ) -> list[tuple[list[Fraction], PathChunk]]:
        """The path's missing points in as few chunks as the heavy pass's budget allows for
        this length."""
        nodes = path.missing()
        per = max(1, self.batcher.limits.heavy_tokens // len(feature))
        return [(part, PathChunk(tuple(targets), tuple(node_alpha(k) for k in part)))
                for part in (nodes[lo:lo + per] for lo in range(0, len(nodes), per))]


def combine(feature: Feature, targets: list[Target], path: PathIntegral) -> list[Explanation]:
    """Per target: the token attributions merged into words, and the completeness delta against
    the outputs at the ends of the path."""
    tokens = path.tokens()  # (K, T)
    output, baseline = path.ends()
    out = []
    for k, target in enumerate(targets):
        scores = tokens[k].tolist()
        change = float(output[k]) - float(baseline[k])
        out.append(Explanation(word_scores(feature, scores), target.name, float(output[k]),
                               float(baseline[k]), sum(scores) - change, path.steps))
    return out

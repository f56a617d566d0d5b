"""One explain pass: the integration steps of several inputs (any adapters) as the rows of one
forward and backward through the frozen base, each row routed to its adapter."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from app.model.adapter import AdapterRouting
from app.model.attribution import baseline_ids, path_attributions
from app.model.encoder import FrozenEncoder
from app.model.tokenization import EncodedBatch, Feature
from app.tasks import Head
from app.tasks.base import Target

PADDING_SLACK = 0.25  # a group of rows pads at most this share of its real tokens


@dataclass(frozen=True)
class PathChunk:
    """Some of the points on one input's integration path (a heavy row of the batcher)."""

    targets: tuple[Target, ...]  # the outputs attributed, each on its own
    alphas: tuple[float, ...]  # where on the path from the baseline (0) to the input (1)


@dataclass(frozen=True)
class ChunkResult:
    """A chunk's points: per point, each target's gradient term per token and its output."""

    terms: Tensor  # (S, K, T)
    outputs: Tensor  # (S, K)


@dataclass(frozen=True)
class PathRow:
    feature: Feature
    chunk: PathChunk
    head: Head
    slot: int  # its adapter's slot in the bank


def explain_pass(encoder: FrozenEncoder, rows: list[PathRow],
                 route: Callable[[list[int]], AdapterRouting]) -> list[ChunkResult]:
    """Each row's part of its attributions. Rows of similar length run together (padding costs
    a forward and a backward per step; each input's own steps share its length)."""
    results: dict[int, ChunkResult] = {}
    for group in length_groups([len(r.feature) for r in rows], [len(r.chunk.alphas) for r in rows]):
        results.update(zip(group, _group_pass(encoder, [rows[i] for i in group], route),
                           strict=True))
    return [results[i] for i in range(len(rows))]


def length_groups(lengths: list[int], widths: list[int]) -> list[list[int]]:
    """Row indices in groups sorted by length, each padding at most PADDING_SLACK of its real
    tokens (a row of `width` steps stands for that many forward rows)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    real = width = 0
    for i in order:  # ascending: the row added is the longest of its group
        n, w = lengths[i], widths[i]
        if current and n * (width + w) > (1 + PADDING_SLACK) * (real + n * w):
            groups.append(current)
            current, real, width = [], 0, 0
        current.append(i)
        real, width = real + n * w, width + w
    return [*groups, current] if current else groups


def _group_pass(encoder: FrozenEncoder, rows: list[PathRow],
                route: Callable[[list[int]], AdapterRouting]) -> list[ChunkResult]:
    """The points of every row (N = their points together) in one forward and one backward per
    target index."""
    batch, start, end = _embedded(encoder, [r.feature for r in rows])  # (B, T), (B, T, H) x 2
    count = max(len(r.chunk.targets) for r in rows)

    def run(owner: list[int], embeds: Tensor) -> Tensor:  # (n, T, H) -> (n, K)
        index = torch.tensor(owner, device=embeds.device)
        sub = EncodedBatch(batch.input_ids[index], batch.attention_mask[index],
                           None if batch.token_type_ids is None else batch.token_type_ids[index])
        hidden = encoder.forward(sub, route([rows[o].slot for o in owner]), embeds)  # (n, T, H)
        outputs, at = [], 0
        for o, members in itertools.groupby(owner):  # an input's points are consecutive
            n = len(list(members))
            row = rows[o]
            out = row.head.predict(hidden[at:at + n], sub.attention_mask[at:at + n])
            cols = [row.head.attributed(out, t).float() for t in row.chunk.targets]
            cols += [out.new_zeros(n, dtype=torch.float32)] * (count - len(cols))
            outputs.append(torch.stack(cols, 1))  # (n, K)
            at += n
        return torch.cat(outputs)

    owner = [b for b, r in enumerate(rows) for _ in r.chunk.alphas]
    index = torch.tensor(owner, device=start.device)
    alphas = torch.tensor([a for r in rows for a in r.chunk.alphas], device=start.device)
    terms, outputs = path_attributions(lambda e: run(owner, e), start[index], end[index],
                                       alphas)  # (N, K, T), (N, K)
    # One device-to-host copy for the pass.
    terms, outputs = terms.cpu(), outputs.cpu()
    results, at = [], 0
    for r in rows:
        k, n, s = len(r.chunk.targets), len(r.feature), len(r.chunk.alphas)
        results.append(ChunkResult(terms[at:at + s, :k, :n], outputs[at:at + s, :k]))
        at += s
    return results


def _embedded(encoder: FrozenEncoder, features: list[Feature]
              ) -> tuple[EncodedBatch, Tensor, Tensor]:
    """The batch on the device, and the word embeddings of its baseline and of its input."""
    tokenizer = encoder.tokenizer
    batch = tokenizer.collate(features).to(encoder.device)
    base = tokenizer.collate([replace(f, input_ids=baseline_ids(f, tokenizer.baseline_id))
                              for f in features]).to(encoder.device)
    with torch.no_grad():
        return batch, encoder.embed(base.input_ids), encoder.embed(batch.input_ids)

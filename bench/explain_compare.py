"""Own batched integrated gradients against Captum's LayerIntegratedGradients, in process.

Both attribute the same rows (SST-2 dev sentences, two random adapters, a bottleneck and a LoRA,
alternating by row) to the word embeddings with the same Gauss-Legendre steps and [MASK] baseline,
with the convergence delta; Captum is given the predicted labels (it needs its targets before it
runs) and the rows' adapter slots as a forward argument it expands with the steps, so it too
batches rows of different adapters. Used by bench_explain; also runnable alone:

    python -m bench.explain_compare --data ../shared/data [--rows 16] [--steps 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.model.adapter import AdapterConfig
from app.model.attribution import baseline_ids, gauss_legendre
from app.model.bank import AdapterBank
from app.model.encoder import FrozenEncoder
from app.model.tokenization import EncodedBatch, Feature
from app.serving.paths import PathChunk, PathRow, explain_pass
from app.tasks import HeadConfig
from app.tasks.base import Head, Target
from bench.common import (
    DEFAULT_DATA_DIR,
    SST2_LABELS,
    emit,
    load_texts,
    log,
    random_adapter,
    setup_logging,
)


class Pair:
    """Two random adapters (bottleneck, LoRA) in a bank, with their classification heads."""

    def __init__(self, encoder: FrozenEncoder, seed: int = 0) -> None:
        self.encoder = encoder
        self.bank = AdapterBank(encoder.info.dims, encoder.device, encoder.dtype)
        self.heads: dict[int, Head] = {}
        head_config = HeadConfig(task_type="classification", labels=SST2_LABELS)
        torch.manual_seed(seed)
        for config in (AdapterConfig(), AdapterConfig(method="lora")):
            adapter, head = random_adapter(config, head_config, encoder.info.dims, std=0.05)
            assert isinstance(head, Head)
            slot = self.bank.add(config, adapter.state_dict())
            self.heads[slot] = head.to(encoder.device).eval().requires_grad_(False)

    def outputs(self, batch: EncodedBatch, slots: Tensor) -> Tensor:  # -> (N, L)
        hidden = self.encoder.forward(batch, self.bank.routing(slots.tolist()))
        rows = []
        for slot, head in self.heads.items():
            idx = (slots == slot).nonzero().squeeze(1)
            rows.append((idx, head.predict(hidden[idx], batch.attention_mask[idx])))
        order = torch.cat([idx for idx, _ in rows]).argsort()
        return torch.cat([out for _, out in rows])[order]


def own(pair: Pair, features: list[Feature], slots: list[int], targets: list[list[int]],
        steps: int) -> Tensor:
    """(B, K, T) attributions, one explain pass (Captum's rule, and the ends for the delta as
    Captum computes them)."""
    alphas, weights = gauss_legendre(steps)
    rows = [PathRow(f, PathChunk(tuple(Target(label=t) for t in ts), (*alphas, 0.0, 1.0)),
                    pair.heads[s], s)
            for f, s, ts in zip(features, slots, targets, strict=True)]
    found = explain_pass(pair.encoder, rows, pair.bank.routing)
    length = max(len(f) for f in features)
    w = torch.tensor(weights).view(-1, 1, 1)
    return torch.stack([torch.nn.functional.pad((w * r.terms[:steps]).sum(0),
                                                (0, length - r.terms.shape[2])) for r in found])


def captum(pair: Pair, features: list[Feature], slots: list[int], targets: list[list[int]],
           steps: int) -> Tensor:
    """(B, K, T) attributions, one LayerIntegratedGradients call per target index."""
    from captum.attr import LayerIntegratedGradients

    enc = pair.encoder
    batch = enc.tokenizer.collate(features)
    base = enc.tokenizer.collate([replace(f, input_ids=baseline_ids(f, enc.tokenizer.baseline_id))
                                  for f in features]).input_ids

    def forward(ids: Tensor, mask: Tensor, types: Tensor | None, rows: Tensor) -> Tensor:
        return pair.outputs(EncodedBatch(ids, mask, types), rows)

    lig = LayerIntegratedGradients(forward, enc.model.get_input_embeddings())
    out = []
    for k in range(len(targets[0])):
        attr, _delta = lig.attribute(
            batch.input_ids, base, target=[t[k] for t in targets], n_steps=steps,
            method="gausslegendre", return_convergence_delta=True,
            additional_forward_args=(batch.attention_mask, batch.token_type_ids,
                                     torch.tensor(slots)))
        out.append(attr.sum(-1))  # (B, T)
    return torch.stack(out, 1)


def compare(encoder: FrozenEncoder, texts: list[str], steps: int, repeats: int = 3
            ) -> dict[str, Any]:
    """Sentences/s of each, for the predicted label alone and for both labels, and how far
    their attributions differ."""
    pair = Pair(encoder)
    features = encoder.tokenizer.encode(texts)
    slots = [list(pair.heads)[i % 2] for i in range(len(texts))]
    with torch.inference_mode():
        probs = pair.outputs(encoder.tokenizer.collate(features), torch.tensor(slots))
    predicted = probs.argmax(-1).tolist()
    result: dict[str, Any] = {"rows": len(texts), "steps": steps, "adapters": 2}
    for name, targets in (("predicted_label", [[p] for p in predicted]),
                          ("both_labels", [[0, 1] for _ in predicted])):
        times: dict[str, list[float]] = {"own": [], "captum": []}
        found: dict[str, Tensor] = {}
        for _ in range(repeats + 1):  # the first round warms up
            for label, fn in (("own", own), ("captum", captum)):
                t0 = time.perf_counter()
                found[label] = fn(pair, features, slots, targets, steps)
                times[label].append(time.perf_counter() - t0)
        best = {k: min(v[1:]) for k, v in times.items()}
        result[name] = {
            "own_sentences_per_s": round(len(texts) / best["own"], 2),
            "captum_sentences_per_s": round(len(texts) / best["captum"], 2),
            "captum_seconds_over_own": round(best["captum"] / best["own"], 3),
            "median_round_s": {k: round(statistics.median(v[1:]), 3) for k, v in times.items()},
            "max_abs_difference": float((found["own"] - found["captum"]).abs().max()),
        }
        log.info("captum vs own (%s): %s", name, result[name])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    encoder = FrozenEncoder.load("")
    emit(compare(encoder, load_texts(args.data)[:args.rows], args.steps))


if __name__ == "__main__":
    main()

"""One forward pass for a batch of rows of any tasks: pin adapters, route rows, apply heads."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from app import metrics
from app.adapters.index import Key
from app.adapters.registry import AdapterRegistry, DeviceTierFull, ResidentAdapter
from app.errors import ServiceError
from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature
from app.serving.paths import ChunkResult, PathChunk, PathRow, explain_pass
from app.tasks import DecodeOptions, Prediction


@dataclass(frozen=True)
class Row:
    """One input of one request: which adapter version, its tokens, how to decode it; or (with
    `explain`) some integration steps of its explanation."""

    key: Key
    feature: Feature
    options: DecodeOptions = DecodeOptions()
    explain: PathChunk | None = None

    @property
    def width(self) -> int:
        """Forward rows it stands for in a batch."""
        return 1 if self.explain is None else len(self.explain.alphas)


class InferenceEngine:
    def __init__(self, encoder: FrozenEncoder, registry: AdapterRegistry) -> None:
        self.encoder = encoder
        self.registry = registry

    def run(self, rows: list[Row]) -> list[Prediction | ChunkResult | Exception]:
        """Per row: the head's decoded prediction (an explain row: its part of the
        attributions), or the error of its adapter (others proceed).

        One forward pass when the device tier holds every adapter of the batch at once (the
        common case); otherwise the batch is cut into passes over as many adapters as fit.
        """
        t0 = time.perf_counter()
        results: dict[int, Prediction | ChunkResult | Exception] = {}
        pending = list(dict.fromkeys(r.key for r in rows))
        while pending:
            pending = self._run_pass(rows, pending, results)
        metrics.BATCH_ROWS.observe(len(rows))
        metrics.BATCH_TOKENS.observe(len(rows) * max((len(r.feature) for r in rows), default=0))
        metrics.BATCH_ADAPTERS.observe(len({r.key for r in rows}))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)
        return [results[i] for i in range(len(rows))]

    def _run_pass(self, rows: list[Row], keys: list[Key],
                  results: dict[int, Prediction | ChunkResult | Exception]) -> list[Key]:
        """One forward pass over the rows of as many of `keys` as the device tier takes at once
        (at least the first); returns the keys left for the next pass."""
        entries: dict[Key, ResidentAdapter] = {}
        left: list[Key] = []
        try:
            for n, key in enumerate(keys):
                try:
                    entries[key] = self.registry.acquire(key, force=not entries)
                except DeviceTierFull:
                    left = keys[n:]
                    break
                except ServiceError as exc:
                    for i, r in enumerate(rows):
                        if r.key == key:
                            results[i] = exc
            ok = [i for i, r in enumerate(rows) if r.key in entries and r.explain is None]
            if ok:
                self._forward([rows[i] for i in ok], entries, ok, results)
            paths = [i for i, r in enumerate(rows) if r.key in entries and r.explain is not None]
            if paths:
                self._explain([rows[i] for i in paths], entries, paths, results)
        finally:
            for entry in entries.values():
                self.registry.release(entry)
        return left

    def _explain(self, rows: list[Row], entries: dict[Key, ResidentAdapter], positions: list[int],
                 results: dict[int, Prediction | ChunkResult | Exception]) -> None:
        """Gradients, with respect to the input embeddings only (the base, the bank and the
        heads hold no tensor that requires one): no inference mode here."""
        for entry in entries.values():
            entry.wait_copied(self.encoder.device)
        found = explain_pass(self.encoder, [
            PathRow(r.feature, r.explain, entries[r.key].head, entries[r.key].slot)
            for r in rows if r.explain is not None], self.registry.routing)
        results.update(zip(positions, found, strict=True))

    @torch.inference_mode()
    def _forward(self, rows: list[Row], entries: dict[Key, ResidentAdapter], positions: list[int],
                 results: dict[int, Prediction | ChunkResult | Exception]) -> None:
        enc = self.encoder
        batch = enc.tokenizer.collate([r.feature for r in rows])
        on_gpu = enc.device.type == "cuda"
        if on_gpu:  # pinned host memory makes the copy asynchronous
            batch = batch.pin_memory()
        batch = batch.to(enc.device, non_blocking=on_gpu)
        for entry in entries.values():
            entry.wait_copied(enc.device)  # GPU: its copy on the side stream is complete
        routing = self.registry.routing([entries[r.key].slot for r in rows])
        hidden = enc.forward(batch, routing)  # (B, T, H)
        groups: dict[Key, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups[r.key].append(i)
        outputs = []
        for key, members in groups.items():
            if len(groups) == 1:  # one task: its head takes the whole batch, no gather
                outputs.append(entries[key].head.predict(hidden, batch.attention_mask))
                continue
            idx = torch.tensor(members, device=hidden.device)
            outputs.append(entries[key].head.predict(hidden[idx], batch.attention_mask[idx]))
        # One device-to-host copy for the whole batch: the only synchronisation point.
        flat = torch.cat([o.reshape(-1).float() for o in outputs]).cpu()
        offset = 0
        for (key, members), out in zip(groups.items(), outputs, strict=True):
            host = flat[offset:offset + out.numel()].view(out.shape)
            offset += out.numel()
            head = entries[key].head
            for j, i in enumerate(members):
                results[positions[i]] = head.decode(host[j], rows[i].feature, rows[i].options)

"""One forward pass for a batch of rows of any tasks: pin adapters, route rows, apply heads."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from app.adapters.registry import AdapterRegistry, Key, ResidentAdapter
from app.errors import ServiceError
from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature


@dataclass(frozen=True)
class Row:
    """One input of one request: which adapter version, and its tokens."""

    key: Key
    feature: Feature


class InferenceEngine:
    def __init__(self, encoder: FrozenEncoder, registry: AdapterRegistry) -> None:
        self.encoder = encoder
        self.registry = registry

    def run(self, rows: list[Row]) -> list[dict[str, Any] | Exception]:
        """Per row: the head's decoded prediction, or the error of its adapter (others proceed)."""
        entries: dict[Key, ResidentAdapter] = {}
        results: list[dict[str, Any] | Exception | None] = [None] * len(rows)
        try:
            for key in dict.fromkeys(r.key for r in rows):
                try:
                    entries[key] = self.registry.acquire(key)
                except ServiceError as exc:
                    for i, r in enumerate(rows):
                        if r.key == key:
                            results[i] = exc
            ok = [i for i, r in enumerate(rows) if r.key in entries]
            if ok:
                self._forward([rows[i] for i in ok], entries, ok, results)
        finally:
            for entry in entries.values():
                self.registry.release(entry)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _forward(self, rows: list[Row], entries: dict[Key, ResidentAdapter], positions: list[int],
                 results: list[Any]) -> None:
        batch = self.encoder.tokenizer.collate([r.feature for r in rows]).to(self.encoder.device)
        routing = self.registry.bank.routing([entries[r.key].slot for r in rows])
        hidden = self.encoder.forward(batch, routing)  # (B, T, H)
        groups: dict[Key, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups[r.key].append(i)
        for key, members in groups.items():
            head = entries[key].head
            idx = torch.tensor(members, device=hidden.device)
            out = head.predict(hidden[idx], batch.attention_mask[idx]).cpu()
            for j, i in enumerate(members):
                results[positions[i]] = head.decode(out[j], rows[i].feature)

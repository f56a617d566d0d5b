"""Stacked weights of every resident adapter, so one forward pass routes each row to its own."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from app.model.adapter import ACTIVATIONS, POSITIONS, AdapterConfig, point_index

NULL_SLOT = 0  # all-zero weights: rows routed here see the bare base


@dataclass
class PointWeights:
    """Stacked weights at one injection point; slot s holds one adapter, zero-padded to rank R."""

    down_w: Tensor  # (S, H, R)
    down_b: Tensor  # (S, R)
    up_w: Tensor  # (S, R, H)
    up_b: Tensor  # (S, H)


class AdapterBank:
    """Device-resident adapters in slots of stacked tensors.

    Slot 0 is the null adapter. Adding writes into a free slot (growing the stacks when needed,
    as new tensors, so a forward pass holding the old ones is unaffected); a slot is only reused
    after the registry has released it, so in-flight rows never see another adapter's weights.
    """

    def __init__(
        self, hidden_size: int, num_layers: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._capacity = 0  # slots, including the null slot
        self._rank = 0
        self._points: list[PointWeights | None] = [None] * (num_layers * len(POSITIONS))
        self._present: list[set[int]] = [set() for _ in self._points]  # slots with weights
        self._slot_rank: dict[int, int] = {}
        self._slot_act: dict[int, str] = {}
        self._free: list[int] = []

    # ----------------------------------------------------------------------------- mutation
    def add(self, config: AdapterConfig, tensors: dict[str, Tensor]) -> int:
        """Copy one adapter (names as in `tensor_shapes`, no prefix) into a free slot."""
        rank = config.bottleneck(self.hidden_size)
        with self._lock:
            slot = self._take_slot()
            self._ensure(rank, [point_index(layer, pos)
                                for layer in range(self.num_layers) for pos in config.positions()])
            for layer in range(self.num_layers):
                for pos in config.positions():
                    self._write(slot, point_index(layer, pos), f"layers.{layer}.{pos}", tensors)
            self._slot_rank[slot] = rank
            self._slot_act[slot] = config.activation
            return slot

    def remove(self, slot: int) -> None:
        with self._lock:
            if slot == NULL_SLOT or slot not in self._slot_rank:
                return
            for point, weights in enumerate(self._points):
                if weights is not None and slot in self._present[point]:
                    for t in (weights.down_w, weights.down_b, weights.up_w, weights.up_b):
                        t[slot].zero_()
                    self._present[point].discard(slot)
            del self._slot_rank[slot], self._slot_act[slot]
            self._free.append(slot)

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._capacity == 0:
            self._capacity = 1
        slot = self._capacity
        self._grow(capacity=max(2, self._capacity * 2), rank=self._rank)
        self._free.extend(range(self._capacity - 1, slot, -1))
        return slot

    def _ensure(self, rank: int, points: list[int]) -> None:
        if rank > self._rank:
            self._grow(capacity=self._capacity, rank=rank)
        for p in points:
            if self._points[p] is None:
                self._points[p] = self._alloc(self._capacity, self._rank)

    def _alloc(self, slots: int, rank: int) -> PointWeights:
        h = self.hidden_size

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=self.device, dtype=self.dtype)

        return PointWeights(zeros(slots, h, rank), zeros(slots, rank), zeros(slots, rank, h),
                            zeros(slots, h))

    def _grow(self, capacity: int, rank: int) -> None:
        for p, old in enumerate(self._points):
            if old is None:
                continue
            new = self._alloc(capacity, rank)
            s, r = old.down_b.shape
            new.down_w[:s, :, :r] = old.down_w
            new.down_b[:s, :r] = old.down_b
            new.up_w[:s, :r, :] = old.up_w
            new.up_b[:s] = old.up_b
            self._points[p] = new
        self._capacity, self._rank = capacity, rank

    def _write(self, slot: int, point: int, key: str, tensors: dict[str, Tensor]) -> None:
        w = self._points[point]
        assert w is not None
        r = tensors[f"{key}.down.weight"].shape[0]
        # Linear weights are (out, in); the stacks hold (in, out) for x @ W.
        w.down_w[slot, :, :r] = tensors[f"{key}.down.weight"].t()
        w.down_b[slot, :r] = tensors[f"{key}.down.bias"]
        w.up_w[slot, :r, :] = tensors[f"{key}.up.weight"].t()
        w.up_b[slot] = tensors[f"{key}.up.bias"]
        self._present[point].add(slot)

    # ------------------------------------------------------------------------------ routing
    def routing(self, slots: list[int]) -> RowRouting:
        """Per-row routing for one batch: row i goes through the adapter in slots[i]."""
        with self._lock:
            return RowRouting(self, slots)

    @property
    def resident(self) -> int:
        return len(self._slot_rank)


class RowRouting:
    """A snapshot of the bank for one forward pass (an AdapterRouting)."""

    def __init__(self, bank: AdapterBank, slots: list[int]) -> None:
        self._points = list(bank._points)
        self._present = [set(p) for p in bank._present]
        unique = sorted(set(slots))
        self._single = unique[0] if len(unique) == 1 else None
        self._single_rank = bank._slot_rank.get(self._single, 0) if self._single else 0
        self._slots = torch.tensor(slots, dtype=torch.long, device=bank.device)
        self._skip = unique == [NULL_SLOT]
        acts = {bank._slot_act[s] for s in unique if s != NULL_SLOT}
        # Rows of one activation are the common case; mixed activations are applied by mask.
        self._act_masks: list[tuple[str, Tensor | None]] = (
            [(acts.pop() if acts else "relu", None)] if len(acts) <= 1 else [
                (a, torch.tensor([bank._slot_act.get(s) == a for s in slots], device=bank.device))
                for a in sorted(acts)
            ]
        )

    def delta(self, point: int, hidden: Tensor) -> Tensor | None:
        w = self._points[point]
        if self._skip or w is None:
            return None
        b, t, h = hidden.shape
        if self._single is not None:
            s, r = self._single, self._single_rank
            if s not in self._present[point]:
                return None
            z = torch.addmm(w.down_b[s, :r], hidden.reshape(b * t, h), w.down_w[s, :, :r])
            z = ACTIVATIONS[self._act_masks[0][0]](z)  # (B*T, r)
            return torch.addmm(w.up_b[s], z, w.up_w[s, :r, :]).view(b, t, h)
        slots = self._slots
        z = torch.baddbmm(w.down_b[slots].unsqueeze(1), hidden, w.down_w[slots])  # (B, T, R)
        z = self._activate(z)
        return torch.baddbmm(w.up_b[slots].unsqueeze(1), z, w.up_w[slots])  # (B, T, H)

    def _activate(self, z: Tensor) -> Tensor:
        if len(self._act_masks) == 1:
            return ACTIVATIONS[self._act_masks[0][0]](z)
        out = z
        for name, mask in self._act_masks:
            assert mask is not None  # one mask per activation when there are several
            out = torch.where(mask.view(-1, 1, 1), ACTIVATIONS[name](z), out)
        return out

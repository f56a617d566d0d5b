"""Stacked weights of every resident adapter, so one forward pass routes each row to its own."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from app.model.adapter import ACTIVATIONS, POSITIONS, AdapterConfig, point_index

NULL_SLOT = 0  # all-zero weights: rows routed here see the bare base
# Slots reserved at once when the bank is sized from a byte budget; beyond them it grows by doubling.
MAX_RESERVED_SLOTS = 1 << 16


@dataclass
class PointWeights:
    """Stacked weights at one injection point; slot s holds one adapter, zero-padded to rank R."""

    down_w: Tensor  # (S, H, R)
    down_b: Tensor  # (S, R)
    up_w: Tensor  # (S, R, H)
    up_b: Tensor  # (S, H)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.down_w, self.down_b, self.up_w, self.up_b


class AdapterBank:
    """Device-resident adapters in slots of stacked tensors.

    Slot 0 is the null adapter. Adding writes a whole slot (weights, zero padding, zeros at the
    points the adapter has none), so a slot never needs clearing and stale values are never read.
    The stacks are reserved for the slots that `budget_bytes` pays for at the first adapter:
    uninitialised memory, which on CPU costs nothing until a slot is written. Beyond them (or when
    a wider adapter arrives) the stacks are replaced by larger ones, never resized in place, so a
    forward pass holding the old ones is unaffected. A slot is only reused after the registry has
    released it, so in-flight rows never see another adapter's weights.
    """

    def __init__(self, hidden_size: int, num_layers: int, device: torch.device,
                 dtype: torch.dtype, budget_bytes: int = 0) -> None:
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.device = device
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._capacity = 0  # slots, including the null slot
        self._rank = 0
        self._points: list[PointWeights | None] = [None] * (num_layers * len(POSITIONS))
        self._present: list[set[int]] = [set() for _ in self._points]  # slots with weights
        self._slot_rank: dict[int, int] = {}
        self._slot_act: dict[int, str] = {}
        self._free: list[int] = []

    # ------------------------------------------------------------------------------ sizing
    def _point_bytes(self, rank: int) -> int:
        """One slot's bytes at one point, at rank `rank`."""
        h = self.hidden_size
        return (2 * h * rank + rank + h) * self.dtype.itemsize

    def _points_with(self, config: AdapterConfig | None) -> int:
        allocated = {p for p, w in enumerate(self._points) if w is not None}
        if config is not None:
            allocated |= {point_index(layer, pos) for layer in range(self.num_layers)
                          for pos in config.positions()}
        return len(allocated)

    def bytes_with(self, config: AdapterConfig | None = None) -> int:
        """Bytes the occupied slots take, counting one more adapter of `config` when given
        (every slot is padded to the widest resident adapter, at every allocated point)."""
        rank = max(self._rank, config.bottleneck(self.hidden_size) if config else 0)
        slots = len(self._slot_rank) + (config is not None)
        return slots * self._points_with(config) * self._point_bytes(rank)

    @property
    def used_bytes(self) -> int:
        return self.bytes_with(None)

    @property
    def resident(self) -> int:
        return len(self._slot_rank)

    # ----------------------------------------------------------------------------- mutation
    def add(self, config: AdapterConfig, tensors: dict[str, Tensor]) -> int:
        """Copy one adapter (names as in `tensor_shapes`, no prefix) into a free slot.

        On a GPU the copies are issued on the calling thread's current stream: a caller on a side
        stream records an event after this and makes the batch that uses the slot wait for it.
        """
        rank = config.bottleneck(self.hidden_size)
        own = {point_index(layer, pos) for layer in range(self.num_layers)
               for pos in config.positions()}
        with self._lock:
            self._ensure(rank, own)
            slot = self._take_slot()
            for point, weights in enumerate(self._points):
                if weights is None:
                    continue
                if point in own:
                    layer, pos = divmod(point, len(POSITIONS))
                    self._write(slot, weights, f"layers.{layer}.{POSITIONS[pos]}", tensors)
                    self._present[point].add(slot)
                else:
                    for t in weights.tensors():
                        t[slot].zero_()
            self._slot_rank[slot] = rank
            self._slot_act[slot] = config.activation
            return slot

    def remove(self, slot: int) -> None:
        """Free a slot for reuse (its next adapter overwrites it whole)."""
        with self._lock:
            if slot == NULL_SLOT or slot not in self._slot_rank:
                return
            for present in self._present:
                present.discard(slot)
            del self._slot_rank[slot], self._slot_act[slot]
            self._free.append(slot)

    def _take_slot(self) -> int:
        if not self._free:
            slot = self._capacity
            self._grow(capacity=max(2, self._capacity * 2), rank=self._rank)
            self._free.extend(range(self._capacity - 1, slot - 1, -1))
        return self._free.pop()

    def _reserved_slots(self, rank: int, points: int) -> int:
        """Slots that `budget_bytes` pays for at this rank and number of points (plus the null one)."""
        per_slot = max(1, points * self._point_bytes(rank))
        return 1 + min(MAX_RESERVED_SLOTS, self.budget_bytes // per_slot)

    def _ensure(self, rank: int, points: set[int]) -> None:
        """Stacks wide enough for `rank` at every one of `points`."""
        if self._capacity == 0:
            all_points = len(points)
            capacity = max(2, self._reserved_slots(rank, all_points))
            self._grow(capacity=capacity, rank=rank)
            self._free.extend(range(capacity - 1, NULL_SLOT, -1))
        elif rank > self._rank:
            self._grow(capacity=self._capacity, rank=rank)
        for p in points:
            if self._points[p] is None:
                weights = self._alloc(self._capacity, self._rank)
                self._zero(weights, [NULL_SLOT, *self._slot_rank])
                self._points[p] = weights

    def _alloc(self, slots: int, rank: int) -> PointWeights:
        h = self.hidden_size

        def empty(*shape: int) -> Tensor:  # written slot by slot: untouched slots cost nothing
            return torch.empty(*shape, device=self.device, dtype=self.dtype)

        return PointWeights(empty(slots, h, rank), empty(slots, rank), empty(slots, rank, h),
                            empty(slots, h))

    def _zero(self, weights: PointWeights, slots: list[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        for t in weights.tensors():
            t.index_fill_(0, index, 0)

    def _grow(self, capacity: int, rank: int) -> None:
        """Replace every stack by one of `capacity` slots at `rank`, keeping the occupied slots."""
        keep = [NULL_SLOT, *sorted(self._slot_rank)]
        for p, old in enumerate(self._points):
            if old is None:
                continue
            new = self._alloc(capacity, rank)
            self._zero(new, keep)
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            r = old.down_b.shape[1]
            new.down_w[index, :, :r] = old.down_w[index]
            new.down_b[index, :r] = old.down_b[index]
            new.up_w[index, :r, :] = old.up_w[index]
            new.up_b[index] = old.up_b[index]
            self._points[p] = new
        self._capacity, self._rank = capacity, rank

    def _write(self, slot: int, w: PointWeights, key: str, tensors: dict[str, Tensor]) -> None:
        r = tensors[f"{key}.down.weight"].shape[0]
        # Linear weights are (out, in); the stacks hold (in, out) for x @ W.
        w.down_w[slot, :, :r].copy_(tensors[f"{key}.down.weight"].t(), non_blocking=True)
        w.down_b[slot, :r].copy_(tensors[f"{key}.down.bias"], non_blocking=True)
        w.up_w[slot, :r, :].copy_(tensors[f"{key}.up.weight"].t(), non_blocking=True)
        w.up_b[slot].copy_(tensors[f"{key}.up.bias"], non_blocking=True)
        if r < self._rank:  # padding: zero, so the extra bottleneck units add nothing
            w.down_w[slot, :, r:].zero_()
            w.down_b[slot, r:].zero_()
            w.up_w[slot, r:, :].zero_()

    # ------------------------------------------------------------------------------ routing
    def routing(self, slots: list[int]) -> RowRouting:
        """Per-row routing for one batch: row i goes through the adapter in slots[i]."""
        with self._lock:
            return RowRouting(self, slots)


class RowRouting:
    """A snapshot of the bank for one forward pass (an AdapterRouting); O(rows + points) to take,
    whatever the number of resident adapters."""

    def __init__(self, bank: AdapterBank, slots: list[int]) -> None:
        self._points = list(bank._points)
        unique = sorted(set(slots))
        self._single = unique[0] if len(unique) == 1 else None
        self._single_rank = bank._slot_rank.get(self._single, 0) if self._single else 0
        # The points where the single adapter has weights (elsewhere its slot holds zeros).
        self._single_points = ({p for p, present in enumerate(bank._present)
                                if self._single in present} if self._single else set())
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
            if point not in self._single_points:
                return None
            z = torch.addmm(w.down_b[s, :r], hidden.reshape(b * t, h), w.down_w[s, :, :r])
            z = ACTIVATIONS[self._act_masks[0][0]](z)  # (B*T, r)
            return torch.addmm(w.up_b[s], z, w.up_w[s, :r, :]).view(b, t, h)
        slots = self._slots  # index_select: a plain gather, cheaper than advanced indexing
        z = torch.baddbmm(w.down_b.index_select(0, slots).unsqueeze(1), hidden,
                          w.down_w.index_select(0, slots))  # (B, T, R)
        z = self._activate(z)
        return torch.baddbmm(w.up_b.index_select(0, slots).unsqueeze(1), z,
                             w.up_w.index_select(0, slots))  # (B, T, H)

    def _activate(self, z: Tensor) -> Tensor:
        if len(self._act_masks) == 1:
            return ACTIVATIONS[self._act_masks[0][0]](z)
        out = z
        for name, mask in self._act_masks:
            assert mask is not None  # one mask per activation when there are several
            out = torch.where(mask.view(-1, 1, 1), ACTIVATIONS[name](z), out)
        return out

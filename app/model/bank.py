"""Stacked weights of every resident adapter, so one forward pass routes each row to its own:
adding, sizing and growing the slots (how a batch reads them: app/model/routing.py)."""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from app.model.adapter import (
    LORA_SITES,
    POSITIONS,
    AdapterConfig,
    Dims,
    point_index,
    site_index,
)
from app.model.routing import (
    BOTTLENECK,
    LORA,
    NULL_SLOT,
    PointWeights,
    RowRouting,
    SlotInfo,
)

# Slots reserved at once when the bank is sized from a byte budget; beyond them it grows by doubling.
MAX_RESERVED_SLOTS = 1 << 16


class _Family:
    """The points of one kind (bottleneck positions or LoRA sites), padded to one rank."""

    def __init__(self, kind: str, shapes: list[tuple[int, int]]) -> None:
        self.kind = kind
        self.shapes = shapes  # (in, out) per point
        self.points: list[PointWeights | None] = [None] * len(shapes)
        self.present: list[set[int]] = [set() for _ in shapes]  # slots with weights
        self.rank = 0

    def point_bytes(self, point: int, rank: int, itemsize: int) -> int:
        d_in, d_out = self.shapes[point]
        biases = (rank + d_out) if self.kind == BOTTLENECK else 0
        return (d_in * rank + rank * d_out + biases) * itemsize


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

    def __init__(self, dims: Dims, device: torch.device, dtype: torch.dtype,
                 budget_bytes: int = 0) -> None:
        self.dims = dims
        self.hidden_size = dims.hidden_size
        self.device = device
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._capacity = 0  # slots, including the null slot
        h = dims.hidden_size
        self._families = {
            BOTTLENECK: _Family(BOTTLENECK, [(h, h)] * (dims.num_layers * len(POSITIONS))),
            LORA: _Family(LORA, [dims.site(s) for _ in range(dims.num_layers) for s in LORA_SITES]),
        }
        self._slots: dict[int, SlotInfo] = {}
        self._free: list[int] = []

    # ------------------------------------------------------------------------------ sizing
    def _own(self, config: AdapterConfig) -> tuple[_Family, set[int], int]:
        """The family an adapter of `config` goes into, its points there and its rank."""
        layers = range(self.dims.num_layers)
        if config.method == LORA:
            return (self._families[LORA],
                    {site_index(i, s) for i in layers for s in config.sites()}, config.r)
        return (self._families[BOTTLENECK],
                {point_index(i, p) for i in layers for p in config.positions()},
                config.bottleneck(self.hidden_size))

    def bytes_with(self, config: AdapterConfig | None = None) -> int:
        """Bytes the occupied slots take, counting one more adapter of `config` when given
        (every slot is padded to the widest resident adapter of a kind, at every allocated point
        of every kind)."""
        slots = len(self._slots) + (config is not None)
        own = self._own(config) if config is not None else None
        item = self.dtype.itemsize
        total = 0
        for family in self._families.values():
            rank = family.rank
            points = {p for p, w in enumerate(family.points) if w is not None}
            norms = {p for p, w in enumerate(family.points) if w is not None and w.ln_w is not None}
            if own is not None and own[0] is family:
                rank, points = max(rank, own[2]), points | own[1]
                if config is not None and config.ln_after:
                    norms |= own[1]
            total += slots * sum(family.point_bytes(p, rank, item) for p in points)
            total += slots * sum(2 * family.shapes[p][1] * item for p in norms)
        return total

    @property
    def used_bytes(self) -> int:
        return self.bytes_with(None)

    @property
    def resident(self) -> int:
        return len(self._slots)

    # ----------------------------------------------------------------------------- mutation
    def add(self, config: AdapterConfig, tensors: dict[str, Tensor]) -> int:
        """Copy one adapter (names as in `tensor_shapes`, no prefix) into a free slot.

        On a GPU the copies are issued on the calling thread's current stream: a caller on a side
        stream records an event after this and makes the batch that uses the slot wait for it.
        """
        family, own, rank = self._own(config)
        with self._lock:
            self._ensure(family, rank, own, config)
            slot = self._take_slot()
            for fam in self._families.values():
                for point, weights in enumerate(fam.points):
                    if weights is None:
                        continue
                    if fam is family and point in own:
                        self._write(fam, point, slot, weights, config, tensors)
                        fam.present[point].add(slot)
                    else:
                        for t in weights.tensors():
                            t[slot].zero_()
            self._slots[slot] = SlotInfo(config.method, rank, config.activation, config.recipe())
            return slot

    def remove(self, slot: int) -> None:
        """Free a slot for reuse (its next adapter overwrites it whole)."""
        with self._lock:
            if slot == NULL_SLOT or slot not in self._slots:
                return
            for family in self._families.values():
                for present in family.present:
                    present.discard(slot)
            del self._slots[slot]
            self._free.append(slot)

    def _take_slot(self) -> int:
        if not self._free:
            slot = self._capacity
            self._grow(capacity=max(2, self._capacity * 2))
            self._free.extend(range(self._capacity - 1, slot - 1, -1))
        return self._free.pop()

    def _ensure(self, family: _Family, rank: int, points: set[int], config: AdapterConfig) -> None:
        """Stacks wide enough for `rank` at every one of `points` (with layer norm stacks when
        the adapter has them)."""
        if self._capacity == 0:
            family.rank = rank
            per_slot = max(1, sum(family.point_bytes(p, rank, self.dtype.itemsize) for p in points))
            capacity = max(2, 1 + min(MAX_RESERVED_SLOTS, self.budget_bytes // per_slot))
            self._capacity = capacity
            self._free.extend(range(capacity - 1, NULL_SLOT, -1))
        elif rank > family.rank:
            self._grow_family(family, self._capacity, rank)
        occupied = [NULL_SLOT, *self._slots]
        for p in points:
            if family.points[p] is None:
                family.rank = max(family.rank, rank)
                weights = self._alloc(family, p, self._capacity, family.rank, ln=False)
                self._zero(weights.tensors(), occupied)
                family.points[p] = weights
            held = family.points[p]
            assert held is not None
            weights = held
            if config.ln_after and family.kind == BOTTLENECK and weights.ln_w is None:
                weights.ln_w, weights.ln_b = (self._empty(self._capacity, family.shapes[p][1])
                                              for _ in range(2))
                self._zero([weights.ln_w, weights.ln_b], occupied)

    def _empty(self, *shape: int) -> Tensor:  # written slot by slot: untouched slots cost nothing
        return torch.empty(*shape, device=self.device, dtype=self.dtype)

    def _alloc(self, family: _Family, point: int, slots: int, rank: int, ln: bool
               ) -> PointWeights:
        d_in, d_out = family.shapes[point]
        bias = family.kind == BOTTLENECK
        return PointWeights(
            self._empty(slots, d_in, rank), self._empty(slots, rank) if bias else None,
            self._empty(slots, rank, d_out), self._empty(slots, d_out) if bias else None,
            self._empty(slots, d_out) if ln else None, self._empty(slots, d_out) if ln else None)

    def _zero(self, tensors: list[Tensor], slots: list[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        for t in tensors:
            t.index_fill_(0, index, 0)

    def _grow(self, capacity: int) -> None:
        for family in self._families.values():
            self._grow_family(family, capacity, family.rank)
        self._capacity = capacity

    def _grow_family(self, family: _Family, capacity: int, rank: int) -> None:
        """Replace the family's stacks by ones of `capacity` slots at `rank`, keeping the
        occupied slots."""
        keep = [NULL_SLOT, *sorted(self._slots)]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for p, old in enumerate(family.points):
            if old is None:
                continue
            new = self._alloc(family, p, capacity, rank, ln=old.ln_w is not None)
            self._zero(new.tensors(), keep)
            r = old.down_w.shape[2]
            new.down_w[index, :, :r] = old.down_w[index]
            new.up_w[index, :r, :] = old.up_w[index]
            for name in ("down_b", "up_b", "ln_w", "ln_b"):
                src, dst = getattr(old, name), getattr(new, name)
                if src is None:
                    continue
                if name == "down_b":  # index assignment writes in place (a gather would copy)
                    dst[index, :r] = src[index]
                else:
                    dst[index] = src[index]
            family.points[p] = new
        family.rank = rank

    def _write(self, family: _Family, point: int, slot: int, w: PointWeights,
               config: AdapterConfig, tensors: dict[str, Tensor]) -> None:
        def put(dst: Tensor, src: Tensor) -> None:
            dst.copy_(src, non_blocking=True)

        rank = family.rank
        if family.kind == LORA:
            layer, s = divmod(point, len(LORA_SITES))
            key = f"layers.{layer}.lora.{LORA_SITES[s]}"
            a, b = tensors[f"{key}.A"], tensors[f"{key}.B"]
            r = a.shape[0]
            put(w.down_w[slot, :, :r], a.t())
            put(w.up_w[slot, :r, :], b.t() * config.lora_scale())
        else:
            layer, pos = divmod(point, len(POSITIONS))
            key = f"layers.{layer}.{POSITIONS[pos]}"
            down_w, down_b = tensors[f"{key}.down.weight"].t(), tensors[f"{key}.down.bias"]
            r = down_b.shape[0]
            if config.ln_before:  # LN(x) W = norm(x) (g * W) + b W: the affine part folds in
                g, beta = tensors[f"{key}.ln_before.weight"], tensors[f"{key}.ln_before.bias"]
                down_b = down_b + beta.to(down_w.dtype) @ down_w
                down_w = g.unsqueeze(1) * down_w
            scale = config.scaling
            assert w.down_b is not None and w.up_b is not None
            put(w.down_w[slot, :, :r], down_w)
            put(w.down_b[slot, :r], down_b)
            up_w, up_b = tensors[f"{key}.up.weight"].t(), tensors[f"{key}.up.bias"]
            if scale != 1.0:
                up_w, up_b = up_w * scale, up_b * scale
            put(w.up_w[slot, :r, :], up_w)
            put(w.up_b[slot], up_b)
            if w.ln_w is not None and w.ln_b is not None:
                if config.ln_after:
                    put(w.ln_w[slot], tensors[f"{key}.ln_after.weight"])
                    put(w.ln_b[slot], tensors[f"{key}.ln_after.bias"])
                else:
                    w.ln_w[slot].zero_()
                    w.ln_b[slot].zero_()
            if r < rank:
                w.down_b[slot, r:].zero_()
        if r < rank:  # padding: zero, so the extra units add nothing
            w.down_w[slot, :, r:].zero_()
            w.up_w[slot, r:, :].zero_()

    # ------------------------------------------------------------------------------ routing
    def routing(self, slots: list[int]) -> RowRouting:
        """Per-row routing for one batch: row i goes through the adapter in slots[i]."""
        with self._lock:
            families = {k: (list(f.points), f.present, f.rank) for k, f in self._families.items()}
            return RowRouting(self.hidden_size, self.device, families, self._slots, slots)

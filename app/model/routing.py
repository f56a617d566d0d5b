"""How one forward pass reads the bank: the stacked weights of a point, and RowRouting, the
per-row routing of a batch (an AdapterRouting) over a snapshot of them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional

from app.model.adapter import (
    ACTIVATIONS,
    NATIVE,
    LayerNorm,
    Recipe,
    plain_block,
    run_recipe,
)

NULL_SLOT = 0  # all-zero weights: rows routed here see the bare base
ADAPTER_LN_EPS = 1e-5  # the adapters' own layer norms (torch's default, as AdapterHub's)
BOTTLENECK, LORA = "bottleneck", "lora"


@dataclass
class PointWeights:
    """Stacked weights at one point; slot s holds one adapter, zero-padded to rank R.

    A bottleneck point holds down (S, H, R) + bias, up (S, R, H) + bias and, once an adapter has
    one, its layer norm after (S, H) x 2; its layer norm before is folded into `down`. A LoRA site
    holds A^T as `down` (S, in, R) and scale * B^T as `up` (S, R, out), without biases.
    """

    down_w: Tensor
    down_b: Tensor | None
    up_w: Tensor
    up_b: Tensor | None
    ln_w: Tensor | None = None
    ln_b: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.down_w, self.down_b, self.up_w, self.up_b, self.ln_w, self.ln_b)
                if t is not None]


@dataclass(frozen=True)
class SlotInfo:
    method: str
    rank: int
    activation: str
    recipe: Recipe


# One kind's stacks as a batch sees them: per point its weights (None: never allocated), per point
# the slots that have weights there, and the rank the stacks are padded to.
Family = tuple[list[PointWeights | None], list[set[int]], int]


@dataclass
class _Group:
    """Rows of a batch that one computation serves: one adapter kind, recipe and activation."""

    rows: Tensor | None  # None: every row of the batch
    slots: Tensor  # their slots, for gathering
    single: int | None  # the one slot they all use, if so (no gather)
    rank: int
    activation: str
    recipe: Recipe


class RowRouting:
    """A snapshot of the bank for one forward pass (an AdapterRouting); O(rows + points) to take,
    whatever the number of resident adapters.

    At each point the rows are grouped by what they compute: one group (every row, one recipe and
    activation) is the common case and needs no indexing; rows without weights at a point skip
    it; rows of other recipes run as their own sub-batches.
    """

    def __init__(self, hidden_size: int, device: torch.device, families: dict[str, Family],
                 held: dict[int, SlotInfo], slots: list[int]) -> None:
        self._hidden = hidden_size
        self._device = device
        self._families = families
        self._info = {s: held[s] for s in set(slots) if s != NULL_SLOT}
        self._row_slots = slots
        self._skip = not self._info
        self._groups: dict[tuple[str, frozenset[int]], list[_Group]] = {}

    def _groups_at(self, kind: str, point: int) -> list[_Group]:
        present = self._families[kind][1][point]
        here = frozenset(s for s in self._info if s in present)
        cached = self._groups.get((kind, here))
        if cached is not None:
            return cached
        by: dict[tuple[Recipe, str], list[int]] = defaultdict(list)
        for i, s in enumerate(self._row_slots):
            if s in here:
                info = self._info[s]
                by[(info.recipe, info.activation)].append(i)
        if len(by) == 1 and (kind == LORA or next(iter(by))[0] == NATIVE):
            # One computation for every row: the others read the null slot's zeros, which add
            # exactly nothing (cheaper than gathering rows out and scattering them back).
            (recipe, act), = by
            slots = [s if s in here else NULL_SLOT for s in self._row_slots]
            single = slots[0] if len(set(slots)) == 1 else None
            group = _Group(None, torch.tensor(slots, dtype=torch.long, device=self._device), single,
                           self._info[single].rank if single is not None
                           else self._families[kind][2], act, recipe)
            self._groups[(kind, here)] = [group]
            return [group]
        groups = []
        every = len(by) == 1 and len(next(iter(by.values()))) == len(self._row_slots)
        for (recipe, act), rows in by.items():
            slots = [self._row_slots[i] for i in rows]
            single = slots[0] if len(set(slots)) == 1 else None
            groups.append(_Group(
                None if every else torch.tensor(rows, dtype=torch.long, device=self._device),
                torch.tensor(slots, dtype=torch.long, device=self._device), single,
                self._info[single].rank if single is not None else self._families[kind][2],
                act, recipe))
        self._groups[(kind, here)] = groups
        return groups

    # ------------------------------------------------------------------------------- LoRA
    def lora(self, site: int, x: Tensor, y: Tensor) -> Tensor:
        w = None if self._skip else self._families[LORA][0][site]
        if w is None:
            return y
        for g in self._groups_at(LORA, site):
            xs = x if g.rows is None else x.index_select(0, g.rows)
            if g.single is not None:
                s, r = g.single, g.rank
                b, t, d = xs.shape
                update = (xs.reshape(b * t, d) @ w.down_w[s, :, :r] @ w.up_w[s, :r, :]
                          ).view(b, t, -1)
            else:
                update = torch.bmm(torch.bmm(xs, w.down_w.index_select(0, g.slots)),
                                   w.up_w.index_select(0, g.slots))
            y = y.add_(update) if g.rows is None else y.index_add_(0, g.rows, update)
        return y

    # ------------------------------------------------------------------------- bottleneck
    def bottleneck(self, point: int, y: Tensor, residual: Tensor | None,
                   layer_norm: LayerNorm | None) -> Tensor:
        w = None if self._skip else self._families[BOTTLENECK][0][point]
        groups = [] if w is None else self._groups_at(BOTTLENECK, point)
        if w is None or not groups:
            return plain_block(y, residual, layer_norm)
        if groups[0].rows is None:  # every row, one computation
            return self._run(w, groups[0], y, residual, layer_norm)
        out = plain_block(y, residual, layer_norm)
        for g in groups:
            assert g.rows is not None
            ys = y.index_select(0, g.rows)
            rs = None if residual is None else residual.index_select(0, g.rows)
            out.index_copy_(0, g.rows, self._run(w, g, ys, rs, layer_norm))
        return out

    def _run(self, w: PointWeights, g: _Group, y: Tensor, residual: Tensor | None,
             layer_norm: LayerNorm | None) -> Tensor:
        act = ACTIVATIONS[g.activation]
        h = self._hidden
        assert w.down_b is not None and w.up_b is not None
        if g.single is not None:
            s, r = g.single, g.rank
            down_w, down_b = w.down_w[s, :, :r], w.down_b[s, :r]
            up_w, up_b = w.up_w[s, :r, :], w.up_b[s]

            def mlp(x: Tensor) -> Tensor:
                if g.recipe.ln_before:
                    x = functional.layer_norm(x, (h,), eps=ADAPTER_LN_EPS)
                b, t, _ = x.shape
                z = act(torch.addmm(down_b, x.reshape(b * t, h), down_w))
                return torch.addmm(up_b, z, up_w).view(b, t, h)

            ln_w = None if w.ln_w is None else w.ln_w[s]
            ln_b = None if w.ln_b is None else w.ln_b[s]
        else:
            slots = g.slots  # index_select: a plain gather, cheaper than advanced indexing
            gdw, gdb = w.down_w.index_select(0, slots), w.down_b.index_select(0, slots)
            guw, gub = w.up_w.index_select(0, slots), w.up_b.index_select(0, slots)

            def mlp(x: Tensor) -> Tensor:
                if g.recipe.ln_before:
                    x = functional.layer_norm(x, (h,), eps=ADAPTER_LN_EPS)
                z = act(torch.baddbmm(gdb.unsqueeze(1), x, gdw))  # (B, T, R)
                return torch.baddbmm(gub.unsqueeze(1), z, guw)  # (B, T, H)

            ln_w = None if w.ln_w is None else w.ln_w.index_select(0, slots).unsqueeze(1)
            ln_b = None if w.ln_b is None else w.ln_b.index_select(0, slots).unsqueeze(1)
        ln_after = None
        if g.recipe.ln_after:
            assert ln_w is not None and ln_b is not None
            weight, bias = ln_w, ln_b

            def ln_after(v: Tensor) -> Tensor:
                return functional.layer_norm(v, (h,), eps=ADAPTER_LN_EPS) * weight + bias

        return run_recipe(g.recipe, y, residual, layer_norm, mlp, ln_after)

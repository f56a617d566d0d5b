"""Adapters: the config (bottleneck or LoRA), the routing protocol the wrapped base layers ask,
the bottleneck recipe every path computes the same way, and one trainable adapter set."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "gelu_new": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "silu": nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leakyrelu": nn.functional.leaky_relu,
}
Activation = Literal["relu", "gelu", "gelu_new", "silu", "tanh", "sigmoid", "leakyrelu"]
# Bottleneck points are (layer index, position); position "ffn" is the feed-forward output
# block (Pfeiffer), "attn" the attention output block (Houlsby adds it).
POSITIONS = ("ffn", "attn")
# LoRA sites: the projections of a layer a low-rank update can target (PEFT's names for BERT).
LORA_SITES = ("query", "key", "value", "attn_output", "intermediate", "output")
LoraSite = Literal["query", "key", "value", "attn_output", "intermediate", "output"]
DEFAULT_LORA_TARGETS: tuple[LoraSite, ...] = ("query", "value")  # PEFT's default for BERT
MAX_BOTTLENECK = 1024
MAX_LORA_RANK = 256
Method = Literal["bottleneck", "lora"]


class Recipe(NamedTuple):
    """Where a bottleneck reads its input and residual and which layer norms it applies (the
    options of AdapterHub's bottleneck configs that change the math). The default is the
    service's own adapter: out = LN(y + up(act(down(y))) + t)."""

    original_ln_before: bool = False  # input x = LN(y + t) instead of y
    residual: Literal["y", "sum", "x"] = "y"  # the residual: y, y + t, or the input x
    adapter_residual_before_ln: bool = False  # add the residual before the adapter's own ln_after
    ln_before: bool = False  # an adapter layer norm on its input
    ln_after: bool = False  # an adapter layer norm on its output
    original_ln_after: bool = True  # the block's own LN(out + t) at the end


NATIVE = Recipe()


class AdapterConfig(BaseModel):
    """Shape of an adapter: a bottleneck h' = h + act(h W_down + b_down) W_up + b_up after each
    output block, or (method "lora") low-rank updates W + (alpha / r) B A of chosen projections."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field("bottleneck", description="bottleneck (default) or lora.")
    bottleneck_size: int | None = Field(
        None, ge=1, le=MAX_BOTTLENECK, description="Bottleneck width; overrides reduction_factor."
    )
    # What training has always used: a bottleneck of 48 on MiniLM's hidden size of 384.
    reduction_factor: float = Field(
        8.0, ge=1, description="Bottleneck width = hidden size / reduction_factor."
    )
    activation: Activation = Field("relu", description="Non-linearity inside the bottleneck.")
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer",
        description="pfeiffer: after each feed-forward output projection; houlsby: also after "
        "each attention output projection.",
    )
    # Bottleneck options of AdapterHub's configs (defaults: this service's own adapter).
    original_ln_before: bool = Field(False, description="Bottleneck input is LN(y + residual).")
    original_ln_after: bool = Field(True, description="The block's layer norm closes it.")
    residual_before_ln: bool | Literal["post_add"] = Field(
        True, description="Residual around the bottleneck taken before the block's layer norm "
        "(true), after adding the block input (post_add), or at the bottleneck input (false).")
    adapter_residual_before_ln: bool = Field(False, description="Residual added before ln_after.")
    ln_before: bool = Field(False, description="A layer norm of its own on the bottleneck input.")
    ln_after: bool = Field(False, description="A layer norm of its own on the bottleneck output.")
    scaling: float = Field(1.0, description="Factor on the bottleneck output.")
    # LoRA
    r: int = Field(8, ge=1, le=MAX_LORA_RANK, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scale numerator: updates are scaled by "
                         "alpha / r (alpha / sqrt(r) with use_rslora).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scale alpha / sqrt(r).")
    target_modules: list[LoraSite] = Field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        description=f"Projections LoRA updates, of {', '.join(LORA_SITES)}.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on LoRA inputs (training).")

    @model_validator(mode="after")
    def _check(self) -> AdapterConfig:
        if self.method == "lora":
            if not self.target_modules:
                raise ValueError(f"target_modules is empty: name at least one of {list(LORA_SITES)}")
            if len(set(self.target_modules)) != len(self.target_modules):
                raise ValueError("target_modules has duplicates")
        if self.residual_before_ln == "post_add" and not self.original_ln_before:
            raise ValueError("residual_before_ln 'post_add' needs original_ln_before")
        return self

    def bottleneck(self, hidden_size: int) -> int:
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(hidden_size // self.reduction_factor))

    def positions(self) -> tuple[str, ...]:
        """Bottleneck positions (none for LoRA)."""
        if self.method == "lora":
            return ()
        return ("ffn", "attn") if self.placement == "houlsby" else ("ffn",)

    def sites(self) -> tuple[str, ...]:
        """LoRA sites, in LORA_SITES order (none for a bottleneck)."""
        if self.method != "lora":
            return ()
        return tuple(s for s in LORA_SITES if s in self.target_modules)

    def lora_scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def recipe(self) -> Recipe:
        residual: Literal["y", "sum", "x"] = (
            "y" if self.residual_before_ln is True else
            "sum" if self.residual_before_ln == "post_add" else "x")
        return Recipe(self.original_ln_before, residual, self.adapter_residual_before_ln,
                      self.ln_before, self.ln_after, self.original_ln_after)


def point_index(layer: int, position: str) -> int:
    """Flat index of a bottleneck point: two per layer."""
    return layer * len(POSITIONS) + POSITIONS.index(position)


def site_index(layer: int, site: str) -> int:
    """Flat index of a LoRA site: six per layer."""
    return layer * len(LORA_SITES) + LORA_SITES.index(site)


@dataclass(frozen=True)
class Dims:
    """The sizes an adapter's tensors depend on."""

    hidden_size: int
    num_layers: int
    intermediate_size: int

    def site(self, site: str) -> tuple[int, int]:
        """(in, out) features of a LoRA site's projection."""
        h, i = self.hidden_size, self.intermediate_size
        return (h, i) if site == "intermediate" else (i, h) if site == "output" else (h, h)


def tensor_shapes(config: AdapterConfig, dims: Dims) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of an adapter (without the file prefix)."""
    h = dims.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    r = config.bottleneck(h)
    for layer in range(dims.num_layers):
        for pos in config.positions():
            key = f"layers.{layer}.{pos}"
            shapes[f"{key}.down.weight"] = (r, h)
            shapes[f"{key}.down.bias"] = (r,)
            shapes[f"{key}.up.weight"] = (h, r)
            shapes[f"{key}.up.bias"] = (h,)
            for norm in ("ln_before", "ln_after"):
                if getattr(config, norm):
                    shapes[f"{key}.{norm}.weight"] = (h,)
                    shapes[f"{key}.{norm}.bias"] = (h,)
        for site in config.sites():
            d_in, d_out = dims.site(site)
            shapes[f"layers.{layer}.lora.{site}.A"] = (config.r, d_in)
            shapes[f"layers.{layer}.lora.{site}.B"] = (d_out, config.r)
    return shapes


LayerNorm = Callable[[Tensor], Tensor]


class AdapterRouting(Protocol):
    """What the wrapped base layers ask during a forward pass."""

    def lora(self, site: int, x: Tensor, y: Tensor) -> Tensor:
        """A projection's output `y` for input `x` plus the routed low-rank update (a routing
        used without gradients may add it to `y` in place)."""

    def bottleneck(self, point: int, y: Tensor, residual: Tensor | None,
                   layer_norm: LayerNorm | None) -> Tensor:
        """An output block's result from its projection output `y` (B, T, H), its input
        `residual` and its layer norm: LN(y + residual) without an adapter. Encoders whose
        blocks are not modules pass None for both: then y plus the adapter's change."""


def plain_block(y: Tensor, residual: Tensor | None, layer_norm: LayerNorm | None) -> Tensor:
    """An output block without adapter."""
    out = y if residual is None else y + residual
    return out if layer_norm is None else layer_norm(out)


def run_recipe(recipe: Recipe, y: Tensor, residual: Tensor | None,
               layer_norm: LayerNorm | None, bottleneck: Callable[[Tensor], Tensor],
               ln_after: LayerNorm | None) -> Tensor:
    """One bottleneck adapter in an output block, as AdapterHub's Bottleneck computes it
    (pre_forward, forward, post_forward). `bottleneck` maps the input to the scaled up-projection,
    its own ln_before included."""
    x = y
    total = None  # y + residual, computed only for the recipes that read it
    if recipe.original_ln_before or recipe.residual == "sum":
        total = y if residual is None else y + residual
        if recipe.original_ln_before:
            x = total if layer_norm is None else layer_norm(total)
    res = total if recipe.residual == "sum" else x if recipe.residual == "x" else y
    assert res is not None
    out = bottleneck(x)
    if recipe.adapter_residual_before_ln:
        out = out + res
    if ln_after is not None:
        out = ln_after(out)
    if not recipe.adapter_residual_before_ln:
        out = out + res
    if recipe.original_ln_after:
        out = plain_block(out, residual, layer_norm)
    return out


class BottleneckAdapter(nn.Module):
    """One bottleneck: [layer norm], down-projection, activation, up-projection (zero-initialised),
    scaling, [layer norm after, applied by the recipe]."""

    def __init__(self, hidden_size: int, bottleneck: int, config: AdapterConfig) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.act = ACTIVATIONS[config.activation]
        self.scaling = config.scaling
        self.ln_before = nn.LayerNorm(hidden_size) if config.ln_before else None
        self.ln_after = nn.LayerNorm(hidden_size) if config.ln_after else None
        self.recipe = config.recipe()
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        # Zero up-projection: an untrained adapter leaves the base output unchanged.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: Tensor) -> Tensor:  # (B, T, H) -> (B, T, H)
        if self.ln_before is not None:
            hidden = self.ln_before(hidden)
        out: Tensor = self.up(self.act(self.down(hidden)))
        return out * self.scaling if self.scaling != 1.0 else out

    def block(self, y: Tensor, residual: Tensor | None, layer_norm: LayerNorm | None) -> Tensor:
        return run_recipe(self.recipe, y, residual, layer_norm, self, self.ln_after)


class LoraUpdate(nn.Module):
    """One low-rank update of a projection: scale * dropout(x) A^T B^T (B zero-initialised)."""

    def __init__(self, d_in: int, d_out: int, config: AdapterConfig) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(config.r, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, config.r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as PEFT initialises lora_A
        self.scale = config.lora_scale()
        self.dropout = nn.Dropout(config.lora_dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = (self.dropout(x) @ self.A.t()) @ self.B.t()
        return out * self.scale


class AdapterSet(nn.Module):
    """All parts of one adapter (every layer, every position or site): the trainable unit.

    It is also an AdapterRouting, so a batch can run through the base with this one adapter.
    """

    def __init__(self, config: AdapterConfig, dims: Dims) -> None:
        super().__init__()
        self.config = config
        r = config.bottleneck(dims.hidden_size)
        # Module names are the file's tensor names: layers.{i}.{position} and layers.{i}.lora.{site}
        layers = []
        for _ in range(dims.num_layers):
            parts: dict[str, nn.Module] = {
                p: BottleneckAdapter(dims.hidden_size, r, config) for p in config.positions()}
            if config.method == "lora":
                parts["lora"] = nn.ModuleDict(
                    {s: LoraUpdate(*dims.site(s), config) for s in config.sites()})
            layers.append(nn.ModuleDict(parts))
        self.layers = nn.ModuleList(layers)

    def lora(self, site: int, x: Tensor, y: Tensor) -> Tensor:
        if self.config.method != "lora":
            return y
        layer, s = divmod(site, len(LORA_SITES))
        parts = self.layers[layer]
        assert isinstance(parts, nn.ModuleDict)
        updates = parts["lora"]
        assert isinstance(updates, nn.ModuleDict)
        name = LORA_SITES[s]
        return y + updates[name](x) if name in updates else y

    def bottleneck(self, point: int, y: Tensor, residual: Tensor | None,
                   layer_norm: LayerNorm | None) -> Tensor:
        layer, pos = divmod(point, len(POSITIONS))
        adapters = self.layers[layer]
        assert isinstance(adapters, nn.ModuleDict)
        name = POSITIONS[pos]
        if name not in adapters:
            return plain_block(y, residual, layer_norm)
        module = adapters[name]
        assert isinstance(module, BottleneckAdapter)
        return module.block(y, residual, layer_norm)

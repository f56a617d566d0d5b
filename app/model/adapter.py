"""Bottleneck adapters: the config, one trainable adapter set, and the wrapper around base layers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "tanh": torch.tanh,
}
# Each point is (layer index, position); position "ffn" is after the feed-forward output
# projection (Pfeiffer), "attn" after the attention output projection (Houlsby adds it).
POSITIONS = ("ffn", "attn")
MAX_BOTTLENECK = 1024


class AdapterConfig(BaseModel):
    """Shape of a bottleneck adapter: h' = h + act(h W_down + b_down) W_up + b_up."""

    model_config = ConfigDict(extra="forbid")

    bottleneck_size: int | None = Field(
        None, ge=1, le=MAX_BOTTLENECK, description="Bottleneck width; overrides reduction_factor."
    )
    # What training has always used: a bottleneck of 48 on MiniLM's hidden size of 384.
    reduction_factor: float = Field(
        8.0, ge=1, description="Bottleneck width = hidden size / reduction_factor."
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="Non-linearity inside the bottleneck (all map 0 to 0)."
    )
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer",
        description="pfeiffer: after each feed-forward output projection; houlsby: also after "
        "each attention output projection.",
    )

    def bottleneck(self, hidden_size: int) -> int:
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(hidden_size // self.reduction_factor))

    def positions(self) -> tuple[str, ...]:
        return ("ffn", "attn") if self.placement == "houlsby" else ("ffn",)


def point_index(layer: int, position: str) -> int:
    """Flat index of an injection point: two per layer."""
    return layer * len(POSITIONS) + POSITIONS.index(position)


def tensor_shapes(config: AdapterConfig, hidden_size: int, num_layers: int
                  ) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of an adapter (without the file prefix)."""
    r = config.bottleneck(hidden_size)
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        for pos in config.positions():
            key = f"layers.{layer}.{pos}"
            shapes[f"{key}.down.weight"] = (r, hidden_size)
            shapes[f"{key}.down.bias"] = (r,)
            shapes[f"{key}.up.weight"] = (hidden_size, r)
            shapes[f"{key}.up.bias"] = (hidden_size,)
    return shapes


class AdapterRouting(Protocol):
    """What the wrapped base layers ask during a forward pass."""

    def delta(self, point: int, hidden: Tensor) -> Tensor | None:
        """The adapter's output for `hidden` (B, T, H) at `point`, or None for no change."""


class BottleneckAdapter(nn.Module):
    """One bottleneck: down-projection, activation, up-projection (zero-initialised)."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.act = ACTIVATIONS[activation]
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        # Zero up-projection: an untrained adapter leaves the base output unchanged.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: Tensor) -> Tensor:  # (B, T, H) -> (B, T, H)
        out: Tensor = self.up(self.act(self.down(hidden)))
        return out


class AdapterSet(nn.Module):
    """All bottlenecks of one adapter (every layer, every position): the trainable unit.

    It is also an AdapterRouting, so a batch can run through the base with this one adapter.
    """

    def __init__(self, config: AdapterConfig, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.config = config
        r = config.bottleneck(hidden_size)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {p: BottleneckAdapter(hidden_size, r, config.activation) for p in config.positions()}
            )
            for _ in range(num_layers)
        )

    def delta(self, point: int, hidden: Tensor) -> Tensor | None:
        layer, pos = divmod(point, len(POSITIONS))
        adapters = self.layers[layer]
        assert isinstance(adapters, nn.ModuleDict)
        name = POSITIONS[pos]
        return adapters[name](hidden) if name in adapters else None


class RoutingHook:
    """Shared by every wrapped layer of one base model: which routing the current thread uses.

    Thread-local so that concurrent forward passes (serving thread, tests, an in-process trainer)
    never see each other's adapters.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def current(self) -> AdapterRouting | None:
        return getattr(self._local, "routing", None)

    def set(self, routing: AdapterRouting | None) -> AdapterRouting | None:
        previous = self.current
        self._local.routing = routing
        return previous


class AdaptedLinear(nn.Module):
    """Wraps a base output projection: y = base(x); y + adapter(y) for the routed adapter."""

    hook: RoutingHook

    def __init__(self, base_layer: nn.Module, point: int, hook: RoutingHook) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.point = point
        # A plain attribute, not a submodule: the hook holds no parameters.
        self.__dict__["hook"] = hook

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.base_layer(x)
        routing = self.hook.current
        if routing is None:
            return y
        delta = routing.delta(self.point, y)
        return y if delta is None else y + delta

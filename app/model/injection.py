"""Which modules of each encoder family get adapters, and the wrappers around them (which keep
the base modules, never copy them): the routing of the current forward pass reaches every wrapped
module through one thread-local hook."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from app.errors import UnsupportedModelError
from app.model.adapter import AdapterRouting, point_index, site_index


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
    """Wraps a base projection: y = base(x) + the routed LoRA update, and, where the encoder has
    no output-block modules (`point` given), the routed bottleneck on y."""

    hook: RoutingHook

    def __init__(self, base_layer: nn.Module, site: int | None, point: int | None,
                 hook: RoutingHook) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.site = site
        self.point = point
        # A plain attribute, not a submodule: the hook holds no parameters.
        self.__dict__["hook"] = hook

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.base_layer(x)
        routing = self.hook.current
        if routing is None:
            return y
        if self.site is not None:
            y = routing.lora(self.site, x, y)
        if self.point is not None:
            y = routing.bottleneck(self.point, y, None, None)
        return y


class AdaptedBlock(nn.Module):
    """Wraps a BERT output block (dense, dropout, LayerNorm; out = LN(dropout(dense(h)) + t)):
    the routed bottleneck runs inside it, where AdapterHub puts it."""

    hook: RoutingHook
    _dense: nn.Module
    _dropout: nn.Module
    _norm: nn.Module

    def __init__(self, block: nn.Module, point: int, hook: RoutingHook) -> None:
        super().__init__()
        self.block = block
        self.point = point
        self.__dict__["hook"] = hook
        # Its parts as plain attributes too (they stay registered once, under `block`).
        for attr, part in (("_dense", "dense"), ("_dropout", "dropout"), ("_norm", "LayerNorm")):
            self.__dict__[attr] = getattr(block, part)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor, *args: object,
                **kwargs: object) -> Tensor:
        y: Tensor = self._dropout(self._dense(hidden_states))
        routing = self.hook.current
        if routing is None:
            out: Tensor = self._norm(y + input_tensor)
            return out
        return routing.bottleneck(self.point, y, input_tensor, self._norm)


@dataclass(frozen=True)
class Layout:
    """Attribute paths inside one transformer layer (and the layer list in the model).

    `sites` are the projections LoRA can target, by LORA_SITES name; `ffn_out`/`attn_out` the
    output projections after which a bottleneck runs. Where `blocks` is true, their parents are
    BERT output blocks (dense, dropout, LayerNorm) and the bottleneck runs inside them.
    """

    layers: str
    ffn_out: str
    attn_out: str
    sites: dict[str, str]
    blocks: bool = False


BERT_LAYOUT = Layout("encoder.layer", "output.dense", "attention.output.dense", {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_output": "attention.output.dense",
    "intermediate": "intermediate.dense", "output": "output.dense",
}, blocks=True)
LAYOUTS: dict[str, Layout] = {
    **{t: BERT_LAYOUT for t in (
        "bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text",
        "roberta-prelayernorm", "xlm-roberta-xl",
    )},
    "mpnet": Layout("encoder.layer", "output.dense", "attention.attn.o", {
        "query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
        "attn_output": "attention.attn.o", "intermediate": "intermediate.dense",
        "output": "output.dense",
    }),
    "distilbert": Layout("transformer.layer", "ffn.lin2", "attention.out_lin", {
        "query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
        "attn_output": "attention.out_lin", "intermediate": "ffn.lin1", "output": "ffn.lin2",
    }),
}


def _get(root: nn.Module, path: str) -> nn.Module | None:
    node: object = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if isinstance(node, nn.Module) else None


def _is_block(module: nn.Module | None) -> bool:
    return module is not None and all(
        isinstance(getattr(module, a, None), m)
        for a, m in (("dense", nn.Linear), ("dropout", nn.Dropout), ("LayerNorm", nn.LayerNorm)))


def find_layout(model: nn.Module, model_type: str) -> Layout:
    """The layout for this model, by type or, for an unlisted BERT-like type, by structure."""
    candidates = ([LAYOUTS[model_type]] if model_type in LAYOUTS
                  else list({id(layout): layout for layout in LAYOUTS.values()}.values()))
    for layout in candidates:
        layers = _get(model, layout.layers)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(
            isinstance(_get(layers[0], p), nn.Linear)
            for p in (layout.ffn_out, layout.attn_out, *layout.sites.values())
        ):
            if layout.blocks and not all(_is_block(_get(layers[0], p.rpartition(".")[0]))
                                         for p in (layout.ffn_out, layout.attn_out)):
                continue
            return layout
    raise UnsupportedModelError(
        f"encoder type {model_type!r} ({type(model).__name__}) is not supported: adapters need "
        f"a list of transformer layers with feed-forward and attention output projections; "
        f"supported types: {', '.join(sorted(LAYOUTS))}"
    )


def _replace(root: nn.Module, path: str, wrap: Callable[[nn.Module], nn.Module]) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = _get(root, parent_path) if parent_path else root
    base = getattr(parent, attr)
    if isinstance(base, AdaptedLinear | AdaptedBlock):
        raise RuntimeError("adapters are already injected into this model")
    setattr(parent, attr, wrap(base))


def inject(model: nn.Module, model_type: str, hook: RoutingHook) -> Layout:
    """Wrap every layer's LoRA sites with AdaptedLinear and its output blocks (or, without block
    modules, its output projections) with the bottleneck; returns the layout used."""
    layout = find_layout(model, model_type)
    layers = _get(model, layout.layers)
    assert isinstance(layers, nn.ModuleList)
    for i, layer in enumerate(layers):
        outputs = {layout.ffn_out: point_index(i, "ffn"), layout.attn_out: point_index(i, "attn")}
        for site, path in layout.sites.items():
            point = None if layout.blocks else outputs.get(path)
            _replace(layer, path, partial(AdaptedLinear, site=site_index(i, site), point=point,
                                          hook=hook))
        if layout.blocks:
            for path, point in outputs.items():
                _replace(layer, path.rpartition(".")[0], partial(AdaptedBlock, point=point,
                                                                 hook=hook))
    return layout

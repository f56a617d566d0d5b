"""Which modules of each encoder family get adapters, and wrapping them (never copying them)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from app.errors import UnsupportedModelError
from app.model.adapter import AdaptedLinear, RoutingHook, point_index


@dataclass(frozen=True)
class Layout:
    """Attribute paths: the layer list in the model, the two output projections in a layer."""

    layers: str
    ffn_out: str
    attn_out: str


BERT_LAYOUT = Layout("encoder.layer", "output.dense", "attention.output.dense")
LAYOUTS: dict[str, Layout] = {
    **{t: BERT_LAYOUT for t in (
        "bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text",
        "roberta-prelayernorm", "xlm-roberta-xl",
    )},
    "mpnet": Layout("encoder.layer", "output.dense", "attention.attn.o"),
    "distilbert": Layout("transformer.layer", "ffn.lin2", "attention.out_lin"),
}


def _get(root: nn.Module, path: str) -> nn.Module | None:
    node: object = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if isinstance(node, nn.Module) else None


def find_layout(model: nn.Module, model_type: str) -> Layout:
    """The layout for this model, by type or, for an unlisted BERT-like type, by structure."""
    candidates = [LAYOUTS[model_type]] if model_type in LAYOUTS else list(dict.fromkeys(LAYOUTS.values()))
    for layout in candidates:
        layers = _get(model, layout.layers)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(
            isinstance(_get(layers[0], p), nn.Linear) for p in (layout.ffn_out, layout.attn_out)
        ):
            return layout
    raise UnsupportedModelError(
        f"encoder type {model_type!r} ({type(model).__name__}) is not supported: adapters need "
        f"a list of transformer layers with feed-forward and attention output projections; "
        f"supported types: {', '.join(sorted(LAYOUTS))}"
    )


def inject(model: nn.Module, model_type: str, hook: RoutingHook) -> int:
    """Wrap every layer's output projections with AdaptedLinear; returns the number of layers."""
    layout = find_layout(model, model_type)
    layers = _get(model, layout.layers)
    assert isinstance(layers, nn.ModuleList)
    for i, layer in enumerate(layers):
        for position, path in (("ffn", layout.ffn_out), ("attn", layout.attn_out)):
            parent_path, _, attr = path.rpartition(".")
            parent = _get(layer, parent_path) if parent_path else layer
            base = getattr(parent, attr)
            if isinstance(base, AdaptedLinear):
                raise RuntimeError("adapters are already injected into this model")
            setattr(parent, attr, AdaptedLinear(base, point_index(i, position), hook))
    return len(layers)

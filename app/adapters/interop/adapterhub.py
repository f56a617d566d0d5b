"""AdapterHub (the `adapters` library) bottleneck adapters with their prediction heads: converted
into this service's format on import, written back as the library's files on export.

Import reads what `model.save_adapter(dir, name, with_head=True)` writes: adapter_config.json,
pytorch_adapter.bin or adapter.safetensors, head_config.json, pytorch_model_head.bin or
model_head.safetensors. Every option that changes the math maps onto AdapterConfig's bottleneck
recipe; options that only act in training (dropout, init_weights, stochastic_depth) are ignored;
any other option is refused (UnsupportedAdapterError), by name. Heads: classification (regression
when num_labels is 1), multilabel_classification, tagging and question_answering become this
service's classification, regression, multi_label_classification, token_classification and
question_answering heads; sentence heads pool by the first token, as AdapterHub's do. Exact
rewrites:

- scaling "learned" (a scalar) and "channel" (a vector) are folded into the up-projection;
- leave_out layers get zero bottleneck weights, which compute what a layer without adapter does
  for the recipes where that holds (leave_out with the other recipes is refused);
- a two-layer head without activation is folded into one linear layer;
- a head with use_pooler copies the served base's pooler, which is what AdapterHub reads.

Export writes the same files for a stored bottleneck adapter and its head: .bin, which
`load_adapter(dir, with_head=True)` reads by default, and .safetensors, which it reads with
use_safetensors=True. AdapterHub's sentence heads read the first token (or the base's pooler), so a
head pooled by mean (this service's default) has no AdapterHub equivalent. Its export is refused
rather than written without the head: an adapter apart from the head it was trained with no longer
answers its task, and `load_adapter(dir, with_head=True)` would load it without a word.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import save as st_save
from torch import Tensor

from app.adapters.format import AdapterMetadata, join, split
from app.adapters.interop import (
    CONFIG_FILE,
    BaseContext,
    ClaimedBase,
    Converted,
    read_config,
    read_weights,
)
from app.adapters.interop.adapterhub_config import (
    FLAGS,
    LEGACY_KEYS,
    LIBRARY_VERSION,
    PARAMS,
    Options,
    read_options,
    skips_exactly,
    unsupported,
)
from app.adapters.interop.adapterhub_heads import HEAD_CONFIG, HEAD_WEIGHTS, export_head, read_head
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import MAX_BOTTLENECK, AdapterConfig

WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")  # (safetensors, torch.save) file names
# model_type -> (the library's model class a head is saved with, its base_model_prefix)
MODEL_CLASSES = {"bert": ("BertAdapterModel", "bert"), "roberta": ("RobertaAdapterModel", "roberta"),
                 "xlm-roberta": ("XLMRobertaAdapterModel", "roberta"),
                 "electra": ("ElectraAdapterModel", "electra")}
POSITION_KEYS = {"attn": "attention.output", "ffn": "output"}  # BERT output blocks
Point = tuple[int, str]  # (layer, position)


def _points(state: dict[str, Tensor], name: str) -> dict[Point, dict[str, Tensor]]:
    """The adapter's tensors per (layer, position), by the library's parameter names."""
    where = "|".join(re.escape(k) for k in sorted(POSITION_KEYS.values(), key=len, reverse=True))
    key_re = re.compile(rf"(?:^|\.)layer\.(\d+)\.({where})\.adapters\.{re.escape(name)}\.(.+)$")
    positions = {v: k for k, v in POSITION_KEYS.items()}
    points: dict[Point, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        for old, new in LEGACY_KEYS.items():
            key = key.replace(old, new)
        match = key_re.search(key)
        if match is None or match[3] not in PARAMS:
            unknown.append(key)
            continue
        points.setdefault((int(match[1]), positions[match[2]]), {})[match[3]] = tensor
    if unknown:
        raise unsupported(f"weights {unknown[:3]}{'...' if len(unknown) > 3 else ''} are not "
                           f"those of a bottleneck adapter named {name!r} in a BERT-style encoder")
    if not points:
        raise InvalidAdapterError(f"the weights hold no tensors of adapter {name!r}")
    return points


def _down(ln_before: bool) -> str:
    """The library's name of the down-projection: second in nn.Sequential after a layer norm."""
    return "adapter_down.1" if ln_before else "adapter_down.0"


def _point_tensors(params: dict[str, Tensor], config: AdapterConfig, learned: bool, size: tuple[int, int],
                   where: str) -> dict[str, Tensor]:
    """One point's tensors under our names (without the layers.{i}.{pos} prefix)."""
    r, h = size
    left = dict(params)  # each tensor is taken once; any left over does not fit the config

    def take(key: str, *shape: int) -> Tensor:
        tensor = left.pop(key, None)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise InvalidAdapterError(f"AdapterHub weights at {where}: {key} of shape {shape} expected, "
                                      f"found {found}")
        return tensor

    down = _down(config.ln_before)
    out = {"down.weight": take(f"{down}.weight", r, h), "down.bias": take(f"{down}.bias", r)}
    up_w, up_b = take("adapter_up.weight", h, r), take("adapter_up.bias", h)
    if learned:  # up(x) * s == (s W) x + s b, for a scalar s or one per channel
        scale = left.pop("scaling", None)
        if scale is None or tuple(scale.shape) not in ((1,), (h,)):
            raise InvalidAdapterError(f"AdapterHub weights at {where}: scaling of shape (1,) or ({h},) "
                                      f"expected, found {None if scale is None else tuple(scale.shape)}")
        up_w, up_b = up_w * scale[:, None], up_b * scale
    out["up.weight"], out["up.bias"] = up_w, up_b
    for ours, theirs, on in (("ln_before", "adapter_down.0", config.ln_before),
                             ("ln_after", "adapter_norm_after", config.ln_after)):
        if on:
            out[f"{ours}.weight"] = take(f"{theirs}.weight", h)
            out[f"{ours}.bias"] = take(f"{theirs}.bias", h)
    if config.ln_before:  # the same layer norm, registered under a second name too
        left.pop("adapter_norm_before.weight", None)
        left.pop("adapter_norm_before.bias", None)
    if left:
        raise InvalidAdapterError(f"AdapterHub weights at {where}: {sorted(left)} do not fit its config")
    return out


def _zero_point(config: AdapterConfig, r: int, h: int) -> dict[str, Tensor]:
    """A bottleneck whose change is zero: what a left-out layer runs (see skips_exactly)."""
    out = {"down.weight": torch.zeros(r, h), "down.bias": torch.zeros(r),
           "up.weight": torch.zeros(h, r), "up.bias": torch.zeros(h)}
    for norm in ("ln_before", "ln_after"):
        if getattr(config, norm):
            out[f"{norm}.weight"], out[f"{norm}.bias"] = torch.ones(h), torch.zeros(h)
    return out


def _claimed(raw: dict[str, Any], points: dict[Point, dict[str, Tensor]], options: Options
             ) -> tuple[ClaimedBase, int]:
    """The base the adapter's files describe, and its bottleneck size (one for all layers)."""
    down = f"{_down(options.fields['ln_before'])}.weight"
    shapes = {tuple(p[down].shape) for p in points.values() if down in p}
    if not shapes or any(len(s) != 2 for s in shapes):
        raise InvalidAdapterError(f"AdapterHub weights lack the down-projection matrices ({down})")
    if len({s[0] for s in shapes}) > 1:
        raise unsupported(f"reduction_factor {raw['config'].get('reduction_factor')!r} gives bottleneck "
                           f"sizes {sorted({s[0] for s in shapes})} in different layers; this service "
                           f"runs one size in every layer")
    r, h = next(iter(shapes))
    # Left-out layers have no weights: the last layer is the last with weights or left out.
    layers = max({layer for layer, _ in points} | options.leave_out) + 1
    name, model_type = raw.get("model_name"), raw.get("model_type")
    return ClaimedBase(name if isinstance(name, str) else None,
                       model_type if isinstance(model_type, str) else None, h, layers), r


def _adapter(raw: dict[str, Any], state: dict[str, Tensor], base: BaseContext
             ) -> tuple[AdapterConfig, dict[str, Tensor], ClaimedBase]:
    """The adapter config, its tensors (every layer of the base) and the base it claims."""
    if not isinstance(raw.get("config"), dict) or not isinstance(raw.get("name"), str):
        raise InvalidAdapterError(f"{CONFIG_FILE} needs a 'config' object and a 'name'")
    options = read_options(raw["config"], legacy="version" not in raw)
    points = _points(state, raw["name"])
    claimed, r = _claimed(raw, points, options)
    info = base.info
    if (claimed.hidden_size, claimed.num_layers) != (info.hidden_size, info.num_layers):
        raise IncompatibleAdapterError(
            f"the AdapterHub adapter was trained on {claimed.name or 'a base'} "
            f"({claimed.model_type}) with hidden size {claimed.hidden_size} and "
            f"{claimed.num_layers} layers; the service runs {info.name} ({info.model_type}) with "
            f"hidden size {info.hidden_size} and {info.num_layers} layers")
    if r > MAX_BOTTLENECK:
        raise unsupported(f"its bottleneck of {r} is wider than this service's limit of {MAX_BOTTLENECK}")
    try:
        config = AdapterConfig(bottleneck_size=r, **options.fields)
    except ValidationError as exc:
        raise InvalidAdapterError(f"AdapterHub adapter config: {exc.errors()[0]['msg']}") from exc
    tensors: dict[str, Tensor] = {}
    for layer in range(info.num_layers):
        for pos in config.positions():
            where = f"layer {layer} {POSITION_KEYS[pos]}"
            params = points.pop((layer, pos), None)
            if params is not None:
                part = _point_tensors(params, config, options.learned_scaling, (r, info.hidden_size), where)
            elif layer not in options.leave_out:
                raise InvalidAdapterError(f"AdapterHub weights lack {where}, which is not in leave_out")
            elif not skips_exactly(config.recipe()):
                raise unsupported(
                    f"leave_out {sorted(options.leave_out)} with these options: no adapter weights "
                    f"compute what a layer without adapter does under {config.recipe()}")
            else:
                part = _zero_point(config, r, info.hidden_size)
            tensors.update({f"layers.{layer}.{pos}.{k}": v for k, v in part.items()})
    if points:
        raise InvalidAdapterError(f"AdapterHub weights at (layer, position) {sorted(points)} do not "
                                  f"fit mh_adapter={raw['config'].get('mh_adapter')!r}")
    return config, tensors, claimed


# ------------------------------------------------------------------------------ the seam
def convert(directory: Path, base: BaseContext) -> Converted:
    """The adapter and head that AdapterHub's save_adapter(dir, name, with_head=True) wrote."""
    raw = read_config(directory)
    state, weights_file = read_weights(directory, WEIGHTS)
    adapter, adapter_tensors, claimed = _adapter(raw, state, base)
    head, head_tensors, head_raw, head_file = read_head(directory, base)
    source = {"library": "adapterhub", "name": raw.get("name"), "model_name": raw.get("model_name"),
              "config": raw.get("config"), "head_config": head_raw,
              "files": [CONFIG_FILE, weights_file, HEAD_CONFIG, head_file]}
    return Converted(adapter, head, join(adapter_tensors, head_tensors), source, claimed)


def reduction_factor(hidden: int, bottleneck: int) -> int | float:
    """A reduction factor for which the library's int(hidden // factor) is `bottleneck`."""
    if hidden % bottleneck == 0:
        return hidden // bottleneck
    return hidden / (bottleneck + 0.5)  # the quotient is bottleneck + 1/2, far from any rounding


def _export_config(config: AdapterConfig, hidden: int) -> dict[str, Any]:
    return {
        "mh_adapter": config.placement == "houlsby", "output_adapter": True,
        "reduction_factor": reduction_factor(hidden, config.bottleneck(hidden)),
        "non_linearity": config.activation, "scaling": float(config.scaling),
        "residual_before_ln": config.residual_before_ln,
        **{flag: getattr(config, flag) for flag in FLAGS},
        "use_gating": False, "is_parallel": False, "phm_layer": False, "inv_adapter": None,
        "cross_adapter": False, "leave_out": [], "dropout": 0.0, "init_weights": "bert",
    }


def _export_weights(adapter: dict[str, Tensor], config: AdapterConfig, name: str, prefix: str,
                    num_layers: int) -> dict[str, Tensor]:
    """Our bottleneck tensors under the library's names."""
    out: dict[str, Tensor] = {}
    down = "adapter_down.1" if config.ln_before else "adapter_down.0"
    names = {"down": down, "up": "adapter_up", "ln_after": "adapter_norm_after"}
    for layer in range(num_layers):
        for pos in config.positions():
            ours = f"layers.{layer}.{pos}"
            theirs = f"{prefix}.encoder.layer.{layer}.{POSITION_KEYS[pos]}.adapters.{name}"
            for p in ("weight", "bias"):
                for part, lib in names.items():
                    if part != "ln_after" or config.ln_after:
                        out[f"{theirs}.{lib}.{p}"] = adapter[f"{ours}.{part}.{p}"]
                if config.ln_before:  # one module, registered under both names
                    out[f"{theirs}.adapter_down.0.{p}"] = adapter[f"{ours}.ln_before.{p}"]
                    out[f"{theirs}.adapter_norm_before.{p}"] = adapter[f"{ours}.ln_before.{p}"]
    return out


def _files(names: tuple[str, str], state: dict[str, Tensor]) -> dict[str, bytes]:
    """The state dict as safetensors and as torch.save bytes, each tensor stored on its own."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {names[0]: st_save(state), names[1]: buffer.getvalue()}


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


def export(meta: AdapterMetadata, tensors: dict[str, Tensor], base: BaseContext) -> dict[str, bytes]:
    """The files AdapterHub's model.load_adapter(dir, with_head=True) reads, for a stored adapter."""
    config, ref = meta.adapter_config, meta.base_model
    if config.method != "bottleneck":
        raise UnsupportedAdapterError(f"adapter {meta.name!r} is a {config.method} adapter; AdapterHub "
                                      f"export covers bottleneck adapters: export it with format=peft")
    if ref.model_type not in MODEL_CLASSES:
        raise UnsupportedAdapterError(f"adapter {meta.name!r} was trained on a {ref.model_type!r} base; "
                                      f"AdapterHub export covers {sorted(MODEL_CLASSES)}")
    model_class, prefix = MODEL_CLASSES[ref.model_type]
    adapter, head = split(tensors)
    head_config, head_state = export_head(meta, head, base)
    common = {"hidden_size": ref.hidden_size, "model_class": model_class, "model_name": ref.name,
              "model_type": ref.model_type, "name": meta.name, "version": LIBRARY_VERSION}
    return {
        CONFIG_FILE: _json({**common, "config": _export_config(config, ref.hidden_size)}),
        HEAD_CONFIG: _json({**common, "config": head_config}),
        **_files(WEIGHTS, _export_weights(adapter, config, meta.name, prefix, ref.num_layers)),
        **_files(HEAD_WEIGHTS, head_state),
    }

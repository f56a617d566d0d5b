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
from typing import Any, NamedTuple

import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from app.adapters.format import AdapterMetadata, join, split
from app.adapters.interop import CONFIG_FILE, BaseContext, ClaimedBase, Converted, read_config
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import MAX_BOTTLENECK, Activation, AdapterConfig, Recipe
from app.tasks import HeadConfig, TaskType, get_task

WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")  # (safetensors, torch.save) file names
HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")
HEAD_CONFIG = "head_config.json"
# The library version whose files an export writes. Without a version a config is read as
# adapter-transformers', whose "gelu" meant gelu_new (the library's ACTIVATION_RENAME).
LIBRARY_VERSION = "adapters.1.3.0"
LEGACY_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}
LEGACY_KEYS = {"attention_text_task_adapters": "adapters", "attention_text_lang_adapters": "adapters",
               "layer_text_task_adapters": "adapters", "layer_text_lang_adapters": "adapters"}
# The library's activation names (transformers' ACT2FN, lower-cased) -> ours; None: identity.
ACTIVATION_NAMES: dict[str, Activation | None] = {
    "relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_new",
    "gelu_fast": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_python_tanh": "gelu_new",
    "swish": "silu", "silu": "silu", "tanh": "tanh", "sigmoid": "sigmoid",
    "leakyrelu": "leakyrelu", "leaky_relu": "leakyrelu", "linear": None,
}
# model_type -> (the library's model class a head is saved with, its base_model_prefix)
MODEL_CLASSES = {"bert": ("BertAdapterModel", "bert"), "roberta": ("RobertaAdapterModel", "roberta"),
                 "xlm-roberta": ("XLMRobertaAdapterModel", "roberta"),
                 "electra": ("ElectraAdapterModel", "electra")}
POSITION_KEYS = {"attn": "attention.output", "ffn": "output"}  # BERT output blocks
IGNORED = {  # BnConfig fields that act only in training, or only with an option refused below
    "dropout", "init_weights", "init_weights_seed", "stochastic_depth", "inv_adapter_reduction_factor",
    "phm_dim", "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule",
    "phm_c_init", "phm_init_range", "learn_phm", "hypercomplex_nonlinearity", "phm_rank", "phm_bias",
}
REFUSED = {  # option -> what it adds; refused unless off
    "use_gating": "a learned gate on the adapter output (UniPELT)",
    "phm_layer": "PHM projections (Compacter)", "is_parallel": "a parallel adapter (ParBnConfig)",
    "inv_adapter": "invertible adapters", "invertible_adapter": "invertible adapters",
    "cross_adapter": "cross-attention adapters",
}
FLAGS = {"original_ln_before": False, "original_ln_after": True, "ln_before": False, "ln_after": False,
         "adapter_residual_before_ln": False}
MAPPED = {*FLAGS, "mh_adapter", "output_adapter", "reduction_factor", "non_linearity",
          "residual_before_ln", "scaling", "leave_out", "architecture"}
PARAMS = {f"{m}.{p}" for m in ("adapter_down.0", "adapter_down.1", "adapter_up", "adapter_norm_before",
                               "adapter_norm_after") for p in ("weight", "bias")} | {"scaling"}
SUPPORTED = (
    "supported: bottleneck adapters (seq_bn/Pfeiffer, double_seq_bn/Houlsby, BnConfig) with "
    "output_adapter, with or without mh_adapter, one bottleneck size in every layer, non_linearity "
    "relu, gelu, gelu_new, swish, tanh, sigmoid or leakyrelu, original_ln_before/after, "
    "residual_before_ln, adapter_residual_before_ln, ln_before/after, scaling (a number, 'learned' or "
    "'channel') and leave_out")


class HeadKind(NamedTuple):
    """One AdapterHub head type as one of this service's task types."""

    head_type: str  # AdapterHub's
    task_type: TaskType  # ours
    outputs: int | None  # a fixed output width; None: one per label
    sentence: bool  # reads the first token or the base's pooler (use_pooler, bias options)
    layers: int  # our head's default number of linear layers
    max_layers: int


HEAD_KINDS = (
    HeadKind("classification", "regression", 1, True, 2, 2),  # num_labels 1
    HeadKind("classification", "classification", None, True, 2, 2),
    HeadKind("multilabel_classification", "multi_label_classification", None, True, 2, 2),
    HeadKind("tagging", "token_classification", None, False, 1, 2),
    HeadKind("question_answering", "question_answering", 2, False, 1, 1),
)
HEAD_KIND_OF_TASK = {kind.task_type: kind for kind in HEAD_KINDS}
SUPPORTED_HEADS = (
    f"supported: head_type {', '.join(f'{k.head_type} -> {k.task_type}' for k in HEAD_KINDS)}, with "
    f"1 or 2 layers (question_answering: 1) and activation_function one of "
    f"{sorted(k for k, v in ACTIVATION_NAMES.items() if v)}")
Point = tuple[int, str]  # (layer, position)


def _unsupported(what: str) -> UnsupportedAdapterError:
    return UnsupportedAdapterError(f"AdapterHub adapter: {what}; {SUPPORTED}")


def _head_unsupported(what: str) -> UnsupportedAdapterError:
    return UnsupportedAdapterError(f"AdapterHub head: {what}; {SUPPORTED_HEADS}")


class Options(NamedTuple):
    """An AdapterHub bottleneck config in this service's terms."""

    fields: dict[str, Any]  # AdapterConfig fields, all but the bottleneck size
    learned_scaling: bool  # scaling "learned" or "channel": a tensor in the weights
    leave_out: frozenset[int]


def activation(name: object, option: str, legacy: bool = False) -> Activation | None:
    """The library's activation `name` as ours (None: identity); refused when not exact."""
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise InvalidAdapterError(f"AdapterHub {option} must be a string, got {name!r}")
    key = (LEGACY_ACTIVATIONS.get(name, name) if legacy else name).lower()
    if key not in ACTIVATION_NAMES:
        raise UnsupportedAdapterError(
            f"AdapterHub {option} {name!r} is not supported: supported are "
            f"{sorted(k for k, v in ACTIVATION_NAMES.items() if v)}")
    return ACTIVATION_NAMES[key]


def read_options(config: dict[str, Any], legacy: bool) -> Options:
    """The bottleneck options of an adapter_config.json 'config', checked."""
    architecture = config.get("architecture")
    if architecture not in (None, "bottleneck"):
        hint = "; for LoRA, save it with PEFT and import format=peft" if architecture == "lora" else ""
        raise _unsupported(f"architecture {architecture!r} is not supported{hint}")
    unknown = sorted(set(config) - MAPPED - IGNORED - set(REFUSED))
    if unknown:
        raise _unsupported(f"options {unknown} are unknown to this converter (it knows those of "
                           f"{LIBRARY_VERSION})")
    for option, what in REFUSED.items():
        if config.get(option):
            raise _unsupported(f"{option}={config[option]!r} ({what}) is not supported")
    if config.get("output_adapter") is not True:
        raise _unsupported("output_adapter=false (adapters only after attention) is not supported")
    act = activation(config.get("non_linearity"), "non_linearity", legacy)
    if act is None:
        raise _unsupported(f"non_linearity {config.get('non_linearity')!r} is not supported")
    fields: dict[str, Any] = {"activation": act,
                              "placement": "houlsby" if config.get("mh_adapter") else "pfeiffer"}
    for flag, default in FLAGS.items():
        value = config.get(flag, default)
        if not isinstance(value, bool):
            raise InvalidAdapterError(f"AdapterHub option {flag} must be true or false, got {value!r}")
        fields[flag] = value
    residual = config.get("residual_before_ln", True)
    if residual not in (True, False, "post_add"):
        raise _unsupported(f"residual_before_ln={residual!r} is not supported")
    fields["residual_before_ln"] = residual
    scaling = config.get("scaling", 1.0)
    learned = scaling in ("learned", "channel")
    if not learned and (isinstance(scaling, bool) or not isinstance(scaling, int | float)):
        raise _unsupported(f"scaling={scaling!r} is not supported")
    fields["scaling"] = 1.0 if learned else float(scaling)
    leave_out = config.get("leave_out") or []
    if not isinstance(leave_out, list) or not all(isinstance(i, int) for i in leave_out):
        raise InvalidAdapterError(f"AdapterHub option leave_out must be a list of layer indices, got "
                                  f"{leave_out!r}")
    return Options(fields, learned, frozenset(leave_out))


def skips_exactly(recipe: Recipe) -> bool:
    """Whether a zero bottleneck with this recipe computes LN(y + t), as a layer without adapter."""
    if recipe.ln_after and recipe.adapter_residual_before_ln:
        return False  # its own layer norm then acts on the residual
    if recipe.original_ln_after:  # LN(residual + t)
        return recipe.residual == "y" or (recipe.residual == "x" and not recipe.original_ln_before)
    return recipe.residual == "x" and recipe.original_ln_before  # the residual LN(y + t) itself


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidAdapterError(f"{path.name} must be a JSON object")
    return data


def read_weights(directory: Path, names: tuple[str, str]) -> tuple[dict[str, Tensor], str]:
    """A state dict from the safetensors file or, failing that, the torch.save one, and its name."""
    path = next((directory / n for n in names if (directory / n).is_file()), None)
    if path is None:
        raise InvalidAdapterError(f"no weights file: expected {names[1]} or {names[0]}")
    try:
        state = (st_load(path.read_bytes()) if path.suffix == ".safetensors"
                 else torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as exc:  # pickle, safetensors and torch raise their own error types
        raise InvalidAdapterError(f"{path.name}: cannot read tensors ({exc})") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise InvalidAdapterError(f"{path.name} is not a state dict of named tensors")
    return {k: v.detach().float() for k, v in state.items()}, path.name


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
        raise _unsupported(f"weights {unknown[:3]}{'...' if len(unknown) > 3 else ''} are not "
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
        raise _unsupported(f"reduction_factor {raw['config'].get('reduction_factor')!r} gives bottleneck "
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
        raise _unsupported(f"its bottleneck of {r} is wider than this service's limit of {MAX_BOTTLENECK}")
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
                raise _unsupported(
                    f"leave_out {sorted(options.leave_out)} with these options: no adapter weights "
                    f"compute what a layer without adapter does under {config.recipe()}")
            else:
                part = _zero_point(config, r, info.hidden_size)
            tensors.update({f"layers.{layer}.{pos}.{k}": v for k, v in part.items()})
    if points:
        raise InvalidAdapterError(f"AdapterHub weights at (layer, position) {sorted(points)} do not "
                                  f"fit mh_adapter={raw['config'].get('mh_adapter')!r}")
    return config, tensors, claimed


# --------------------------------------------------------------------------------------- heads
def _labels(config: dict[str, Any], n: int) -> list[str]:
    """Class names in id order, from id2label or label2id; LABEL_i when neither is given."""
    id2label, label2id = config.get("id2label"), config.get("label2id")
    try:
        if isinstance(id2label, dict):
            names = {int(i): str(label) for i, label in id2label.items()}
        elif isinstance(label2id, dict):
            names = {int(i): str(label) for label, i in label2id.items()}
        else:
            return [f"LABEL_{i}" for i in range(n)]
    except (TypeError, ValueError) as exc:
        raise InvalidAdapterError(f"AdapterHub head: label ids must be integers ({exc})") from exc
    if sorted(names) != list(range(n)) or len(set(names.values())) != n:
        raise InvalidAdapterError(f"AdapterHub head: labels {names} are not {n} distinct names with "
                                  f"ids 0..{n - 1}")
    return [names[i] for i in range(n)]


def _head_kind(config: dict[str, Any]) -> tuple[HeadKind, int]:
    """The kind of a head config and its output width (num_labels)."""
    head_type, n = config.get("head_type"), config.get("num_labels")
    kinds = [k for k in HEAD_KINDS if k.head_type == head_type]
    if not kinds:
        raise _head_unsupported(f"head_type {head_type!r} is not supported")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidAdapterError(f"AdapterHub head: num_labels must be a positive integer, got {n!r}")
    kind = next((k for k in kinds if k.outputs == n), None) or next(
        (k for k in kinds if k.outputs is None), None)
    if kind is None:
        raise _head_unsupported(f"a {head_type} head with num_labels {n}")
    return kind, n


def _linears(state: dict[str, Tensor], name: str) -> list[tuple[Tensor, Tensor | None]]:
    """The head's linear layers in order, as (weight, bias or None)."""
    key_re = re.compile(rf"^heads\.{re.escape(name)}\.(\d+)\.(weight|bias)$")
    layers: dict[int, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        match = key_re.match(key)
        if match is None:
            raise _head_unsupported(f"weight {key!r} is not one of a prediction head named {name!r}")
        layers.setdefault(int(match[1]), {})[match[2]] = tensor
    if any("weight" not in p for p in layers.values()):
        raise InvalidAdapterError("AdapterHub head weights have a bias without its weight")
    return [(p["weight"], p.get("bias")) for _, p in sorted(layers.items())]


def _head_layers(linears: list[tuple[Tensor, Tensor | None]], layers: int, n: int,
                 act: Activation | None, h: int) -> dict[str, Tensor]:
    """The head's linear layers under our names ("dense", "out"), checked against the base."""
    shapes = [(h, h)] * (layers - 1) + [(n, h)]
    if [tuple(w.shape) for w, _ in linears] != shapes:
        raise IncompatibleAdapterError(
            f"AdapterHub head weights have shapes {[tuple(w.shape) for w, _ in linears]}; a "
            f"{layers}-layer head of {n} outputs on the served hidden size {h} needs {shapes}")
    weights = [(w, torch.zeros(w.shape[0]) if b is None else b) for w, b in linears]  # bias=False
    if layers == 2 and act is None:  # no activation between them: one linear layer computes both
        (w1, b1), (w2, b2) = ((w.double(), b.double()) for w, b in weights)
        weights = [((w2 @ w1).float(), (w2 @ b1 + b2).float())]
    tensors: dict[str, Tensor] = {}
    for part, (w, b) in zip(("dense", "out")[2 - len(weights):], weights, strict=True):
        tensors[f"{part}.weight"], tensors[f"{part}.bias"] = w, b
    return tensors


def _head(directory: Path, base: BaseContext) -> tuple[HeadConfig, dict[str, Tensor], dict[str, Any], str]:
    """The head's config, its tensors under our names, its raw config and weights file."""
    if not (directory / HEAD_CONFIG).is_file():
        raise InvalidAdapterError(f"no {HEAD_CONFIG}: the service serves an adapter with its "
                                  f"prediction head; save it with model.save_adapter(dir, name, "
                                  f"with_head=True)")
    raw = _read_json(directory / HEAD_CONFIG)
    config = raw.get("config")
    if not isinstance(config, dict):
        raise _head_unsupported(f"{HEAD_CONFIG} has no flex head config (a static head such as "
                                f"BertForSequenceClassification's is not supported)")
    kind, n = _head_kind(config)
    layers = config.get("layers", 1)
    use_pooler = bool(config.get("use_pooler")) and kind.sentence
    if not isinstance(layers, int) or not 1 <= layers <= kind.max_layers:
        raise _head_unsupported(f"a {kind.head_type} head with layers={layers!r}")
    state, file = read_weights(directory, HEAD_WEIGHTS)
    act = activation(config.get("activation_function"), "activation_function") if layers == 2 else None
    tensors = _head_layers(_linears(state, str(raw.get("name"))), layers, n, act, base.info.hidden_size)
    if use_pooler:
        if base.pooler is None:
            raise _head_unsupported("use_pooler=true reads the base model's pooler, and the served "
                                    f"base {base.info.name} has none")
        tensors.update({f"pooler.{k}": v.clone() for k, v in base.pooler.items()})
    dropout = config.get("dropout_prob")
    head = HeadConfig(
        task_type=kind.task_type, labels=[] if kind.outputs else _labels(config, n),
        pooling="cls", layers=2 if "dense.weight" in tensors else 1, activation=act or "tanh",
        use_pooler=use_pooler,
        dropout=dropout if isinstance(dropout, int | float) and 0 <= dropout < 1 else 0.1)
    try:
        get_task(kind.task_type).check_labels(head.labels)
    except ValueError as exc:
        raise InvalidAdapterError(f"AdapterHub head: {exc}") from exc
    return head, tensors, config, file


def _export_head(meta: AdapterMetadata, head: dict[str, Tensor], base: BaseContext
                 ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The library's head config and its weights, for our head."""
    hc = meta.head_config
    kind = HEAD_KIND_OF_TASK.get(hc.task_type)
    if kind is None:
        raise UnsupportedAdapterError(f"adapter {meta.name!r} is {hc.task_type}, which AdapterHub "
                                      f"export does not cover: {SUPPORTED_HEADS}")
    config: dict[str, Any] = {
        "head_type": kind.head_type, "num_labels": kind.outputs or len(hc.labels),
        "layers": min(hc.layers or kind.layers, kind.max_layers), "activation_function": hc.activation,
        "label2id": {label: i for i, label in enumerate(hc.labels)} or None, "dropout_prob": hc.dropout}
    if kind.sentence:
        if not hc.use_pooler and hc.pooling != "cls":
            raise UnsupportedAdapterError(
                f"adapter {meta.name!r} has a head with pooling={hc.pooling!r}; AdapterHub's "
                f"sentence heads read the first token (pooling='cls') or BERT's pooler "
                f"(use_pooler=true): train it with one of those to export it to AdapterHub")
        if hc.use_pooler and (base.pooler is None or not all(
                torch.equal(head[f"pooler.{k}"].float(), v.float()) for k, v in base.pooler.items())):
            raise UnsupportedAdapterError(
                f"adapter {meta.name!r} has a head with its own pooler; AdapterHub's use_pooler "
                f"reads the base checkpoint's pooler, which differs (or {base.info.name} has none)")
        config.update(use_pooler=hc.use_pooler, bias=True)
    # The library's head is nn.Sequential(Dropout, Linear, activation, Dropout, Linear).
    parts = (("dense", 1), ("out", 4)) if config["layers"] == 2 else (("out", 1),)
    state = {f"heads.{meta.name}.{i}.{p}": head[f"{part}.{p}"] for part, i in parts
             for p in ("weight", "bias")}
    return config, state


# ------------------------------------------------------------------------------ the seam
def convert(directory: Path, base: BaseContext) -> Converted:
    """The adapter and head that AdapterHub's save_adapter(dir, name, with_head=True) wrote."""
    raw = read_config(directory)
    state, weights_file = read_weights(directory, WEIGHTS)
    adapter, adapter_tensors, claimed = _adapter(raw, state, base)
    head, head_tensors, head_raw, head_file = _head(directory, base)
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
    head_config, head_state = _export_head(meta, head, base)
    common = {"hidden_size": ref.hidden_size, "model_class": model_class, "model_name": ref.name,
              "model_type": ref.model_type, "name": meta.name, "version": LIBRARY_VERSION}
    return {
        CONFIG_FILE: _json({**common, "config": _export_config(config, ref.hidden_size)}),
        HEAD_CONFIG: _json({**common, "config": head_config}),
        **_files(WEIGHTS, _export_weights(adapter, config, meta.name, prefix, ref.num_layers)),
        **_files(HEAD_WEIGHTS, head_state),
    }

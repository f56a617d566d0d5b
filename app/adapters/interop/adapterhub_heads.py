"""AdapterHub's prediction heads (head_config.json + head weights) as this service's heads, and
back: classification (regression when num_labels is 1), multilabel_classification, tagging and
question_answering; sentence heads read the first token or the base's pooler."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from app.adapters.format import AdapterMetadata
from app.adapters.interop import BaseContext, read_json, read_labels, read_weights
from app.adapters.interop.adapterhub_config import ACTIVATION_NAMES, activation
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import Activation
from app.tasks import HeadConfig, TaskType, get_task

HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")
HEAD_CONFIG = "head_config.json"


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


def _head_unsupported(what: str) -> UnsupportedAdapterError:
    return UnsupportedAdapterError(f"AdapterHub head: {what}; {SUPPORTED_HEADS}")


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


def read_head(directory: Path, base: BaseContext
              ) -> tuple[HeadConfig, dict[str, Tensor], dict[str, Any], str]:
    """The head's config, its tensors under our names, its raw config and weights file."""
    if not (directory / HEAD_CONFIG).is_file():
        raise InvalidAdapterError(f"no {HEAD_CONFIG}: the service serves an adapter with its "
                                  f"prediction head; save it with model.save_adapter(dir, name, "
                                  f"with_head=True)")
    raw = read_json(directory / HEAD_CONFIG)
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
        task_type=kind.task_type, labels=[] if kind.outputs else read_labels(config, n, "AdapterHub head"),
        pooling="cls", layers=2 if "dense.weight" in tensors else 1, activation=act or "tanh",
        use_pooler=use_pooler,
        dropout=dropout if isinstance(dropout, int | float) and 0 <= dropout < 1 else 0.1)
    try:
        get_task(kind.task_type).check_labels(head.labels)
    except ValueError as exc:
        raise InvalidAdapterError(f"AdapterHub head: {exc}") from exc
    return head, tensors, config, file


def export_head(meta: AdapterMetadata, head: dict[str, Tensor], base: BaseContext
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

"""Hugging Face PEFT LoRA adapters of BERT classifiers: imported into this service's LoRA and heads,
exported back, both exact to float rounding.

What `peft_model.save_pretrained(dir)` writes for a BertForSequenceClassification (task_type
SEQ_CLS) or BertForTokenClassification (TOKEN_CLS), and what it becomes here:
- adapter_config.json: r, lora_alpha, use_rslora and target_modules (names or a regex), resolved
  against BERT's module names as PEFT resolves them (layers_to_transform, layers_pattern,
  exclude_modules, modules_to_save) -> AdapterConfig(method="lora"); layers a target skips get zero
  A and B. A LoRA on the pooler's dense (a bare "dense" reaches it) belongs to the head: it is
  folded into the head's pooler, W + scale * B A.
- adapter_model.safetensors (or .bin): lora_A (r, in) and lora_B (out, r) per module, which are
  this service's A and B, and the modules_to_save copies: the classifier and, when saved, the
  pooler. BertForSequenceClassification computes classifier(tanh(pooler(first token))): a head
  with use_pooler and one layer, its pooler the file's or else the served base checkpoint's.
  BertForTokenClassification applies the classifier to every token: a one-layer tagging head.
- config.json (optional, the model config saved next to it): id2label and problem_type. Without
  it the labels are LABEL_0, LABEL_1, ... as transformers names them, and one output means
  regression.

Export writes the same three files for a stored LoRA adapter. Its config.json holds only the label
fields of a transformers config (id2label, label2id, problem_type), not a model config: the base
comes from the user, who builds the model with them and loads the adapter,
    model = BertForSequenceClassification.from_pretrained(base, **json.load(open(d / "config.json")))
    model = PeftModel.from_pretrained(model, d)
The head's pooler is saved as a module to save ("pooler"), so a pooler trained here exports too.

Every option that would change the numbers and is not computed here is refused
(UnsupportedAdapterError) with its name and what is supported: an import never serves wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from app.adapters.format import join
from app.adapters.interop import (
    CONFIG_FILE,
    BaseContext,
    ClaimedBase,
    Converted,
    read_config,
    read_json,
    read_labels,
    read_weights,
)
from app.adapters.interop.peft_config import (
    CLASSIFIER,
    KEY_PREFIX,
    LAYER_RE,
    LAYERS,
    MODEL_CONFIG_FILE,
    POOLER,
    SEQ_CLS,
    SITE_PATHS,
    SUPPORTED,
    TASKS,
    WEIGHTS_FILES,
    check_options,
    resolve,
    site,
)
from app.adapters.interop.peft_export import export as export  # the seam's other half
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import LORA_SITES, MAX_LORA_RANK, AdapterConfig
from app.model.encoder import BaseModelInfo
from app.tasks import HeadConfig, TaskType, get_task

Lora = dict[str, tuple[Tensor, Tensor]]  # module name -> (lora_A (r, in), lora_B (out, r))


# ---------------------------------------------------------------------------------- import
def convert(directory: Path, base: BaseContext) -> Converted:
    """The PEFT LoRA adapter saved in `directory` (with its classifier), in this service's terms."""
    config = read_config(directory)
    check_options(config)
    if base.info.model_type != "bert":
        raise UnsupportedAdapterError(
            f"PEFT adapters are imported onto BERT bases (module names bert.*); the service runs "
            f"{base.info.name!r}, a {base.info.model_type!r} model")
    path = directory / MODEL_CONFIG_FILE
    model_config = read_json(path) if path.is_file() else {}
    weights, weights_file = read_weights(directory, WEIGHTS_FILES)
    lora, saved = _split_keys(weights)
    peft_task = str(config["task_type"])
    classifier = {p: saved.pop(f"{CLASSIFIER}.{p}", None) for p in ("weight", "bias")}
    if classifier["weight"] is None or classifier["bias"] is None:
        raise UnsupportedAdapterError(
            f"{weights_file} holds no classifier weights, so the classifier would be the base's "
            f"random initialisation: save the adapter with LoraConfig(modules_to_save="
            f"['classifier'])")
    claimed = _claimed(config, model_config, classifier["weight"], lora)
    _check_fits(claimed, lora, base.info)
    targets = resolve(config, peft_task, base.info.num_layers)
    _check_weights_match(targets, lora, weights_file)
    adapter, tensors = _adapter(config, targets, lora, base.info)
    head, head_tensors = _head(peft_task, model_config, classifier, base,
                               _pooler(config, targets, saved, lora, base))
    if saved:
        raise UnsupportedAdapterError(
            f"{weights_file} holds weights that cannot be placed: {sorted(saved)[:5]} (modules_to_"
            f"save beyond the classifier and the pooler); {SUPPORTED}")
    files = [CONFIG_FILE, weights_file] + ([MODEL_CONFIG_FILE] if model_config else [])
    source = {"library": "peft", "peft_type": config["peft_type"], "task_type": peft_task,
              "base_model_name_or_path": config.get("base_model_name_or_path"), "config": config,
              "files": files}
    return Converted(adapter, head, join(tensors, head_tensors), source, claimed)


def _split_keys(weights: dict[str, Tensor]) -> tuple[Lora, dict[str, Tensor]]:
    """({module: (lora_A, lora_B)}, {modules_to_save parameter: tensor}), names as in the model."""
    lora: dict[str, dict[str, Tensor]] = {}
    saved: dict[str, Tensor] = {}
    for key, tensor in weights.items():
        if not key.startswith(KEY_PREFIX):
            raise UnsupportedAdapterError(
                f"weight {key!r} does not start with {KEY_PREFIX!r}: not saved by "
                f"PeftModel.save_pretrained; {SUPPORTED}")
        name = key[len(KEY_PREFIX):]
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if match:
            lora.setdefault(match[1], {})[match[2]] = tensor
        else:
            saved[name] = tensor
    halves = [m for m, ab in lora.items() if len(ab) != 2]
    if halves:
        raise InvalidAdapterError(f"LoRA weights of {halves[:3]} lack lora_A or lora_B")
    return {m: (ab["A"], ab["B"]) for m, ab in lora.items()}, saved


def _claimed(config: dict[str, Any], model_config: dict[str, Any], classifier: Tensor,
             lora: Lora) -> ClaimedBase:
    """What the files say about their base: config.json where saved, else the weights."""
    layers = model_config.get("num_hidden_layers")
    every_layer = (isinstance(config.get("target_modules"), list)
                   and config.get("layers_to_transform") in (None, [])
                   and config.get("exclude_modules") in (None, []))
    indices = [int(m[1]) for m in map(LAYER_RE.fullmatch, lora) if m]
    if layers is None and every_layer and indices:  # PEFT then targets every layer
        layers = max(indices) + 1
    return ClaimedBase(
        name=config.get("base_model_name_or_path"), model_type=model_config.get("model_type", "bert"),
        hidden_size=int(classifier.shape[1]), num_layers=layers,
        vocab_size=model_config.get("vocab_size"))


def _check_fits(claimed: ClaimedBase, lora: Lora, info: BaseModelInfo) -> None:
    deepest = max((int(m[1]) + 1 for m in map(LAYER_RE.fullmatch, lora) if m), default=0)
    if (claimed.hidden_size == info.hidden_size and deepest <= info.num_layers
            and claimed.num_layers in (None, info.num_layers)):
        return
    said = f" and {claimed.num_layers} layers" if claimed.num_layers is not None else (
        f" and at least {deepest} layers" if deepest > info.num_layers else "")
    raise IncompatibleAdapterError(
        f"the PEFT adapter was trained on {claimed.name!r} with hidden size {claimed.hidden_size}"
        f"{said}; the service runs {info.name!r} with hidden size {info.hidden_size} and "
        f"{info.num_layers} layers")


def _check_weights_match(targets: dict[str, Any], lora: Lora, weights_file: str) -> None:
    extra = sorted(set(lora) - set(targets))
    if extra:
        raise UnsupportedAdapterError(
            f"{weights_file} has LoRA weights for {extra[:5]}, which target_modules does not "
            f"name for this base; they cannot be placed; {SUPPORTED}")
    missing = [t for t in targets if t not in lora]
    if missing:
        raise InvalidAdapterError(f"{weights_file} lacks the LoRA weights of {missing[:5]}, "
                                  f"which target_modules names")


# ------------------------------------------------------------------------ adapter, head
def _adapter(config: dict[str, Any], targets: dict[str, tuple[int, float]], lora: Lora,
             info: BaseModelInfo) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """The AdapterConfig and its tensors (zeros where a layer is not targeted)."""
    ranks = sorted({rank for t, rank in targets.items() if t != POOLER})
    if len(ranks) > 1:
        raise UnsupportedAdapterError(
            f"rank_pattern/alpha_pattern give the projections different (r, lora_alpha): "
            f"{ranks}; an adapter here has one r and one alpha; {SUPPORTED}")
    # A LoRA on the pooler alone leaves the encoder as it is: a zero update of one projection.
    r, alpha = ranks[0] if ranks else (1, 1.0)
    if r > MAX_LORA_RANK:
        raise UnsupportedAdapterError(f"LoRA rank {r} is greater than the maximum {MAX_LORA_RANK}")
    found = {place[1] for t in targets if (place := site(t)) is not None}
    try:
        adapter = AdapterConfig.model_validate({
            "method": "lora", "r": r, "alpha": alpha, "use_rslora": bool(config.get("use_rslora")),
            "target_modules": [s for s in LORA_SITES if s in found] or ["query"],
            "lora_dropout": config.get("lora_dropout") or 0.0})
    except ValidationError as exc:
        raise InvalidAdapterError(f"{CONFIG_FILE}: {exc.errors()[0]['msg']}") from exc
    tensors: dict[str, Tensor] = {}
    for layer in range(info.num_layers):
        for name in adapter.sites():
            module = f"{LAYERS}.{layer}.{SITE_PATHS[name]}"
            d_in, d_out = info.dims.site(name)
            a, b = lora.get(module, (torch.zeros(r, d_in), torch.zeros(d_out, r)))
            _check_shapes(module, a, b, r, (d_in, d_out), info)
            tensors[f"layers.{layer}.lora.{name}.A"] = a
            tensors[f"layers.{layer}.lora.{name}.B"] = b
    return adapter, tensors


def _check_shapes(module: str, a: Tensor, b: Tensor, r: int, fan: tuple[int, int],
                  info: BaseModelInfo) -> None:
    """lora_A (r, in) and lora_B (out, r) of `module` against the base and the config's r."""
    d_in, d_out = fan
    if a.shape[1:] != (d_in,) or b.shape[:1] != (d_out,):
        raise IncompatibleAdapterError(
            f"the LoRA of {module} maps {a.shape[-1]} to {b.shape[0]} features; on the served "
            f"{info.name!r} (hidden size {info.hidden_size}, intermediate size "
            f"{info.intermediate_size}, {info.num_layers} layers) that projection maps {d_in} "
            f"to {d_out}")
    if a.shape != (r, d_in) or b.shape != (d_out, r):
        raise InvalidAdapterError(
            f"the LoRA of {module} has rank {a.shape[0]} (lora_A {tuple(a.shape)}, lora_B "
            f"{tuple(b.shape)}); {CONFIG_FILE} gives it r={r}")


def _pooler(config: dict[str, Any], targets: dict[str, tuple[int, float]],
            saved: dict[str, Tensor], lora: Lora, base: BaseContext) -> dict[str, Tensor]:
    """BertForSequenceClassification's pooler: the file's (pooler in modules_to_save) or the base
    checkpoint's, with a LoRA on it folded in; nothing for BertForTokenClassification."""
    if str(config["task_type"]) != SEQ_CLS:
        return {}
    h = base.info.hidden_size
    own = [saved.pop(f"{POOLER}.{p}", None) for p in ("weight", "bias")]
    if own[0] is not None and own[1] is not None:
        weight, bias = own[0], own[1]
    elif base.pooler is None:
        raise UnsupportedAdapterError(
            f"BertForSequenceClassification classifies the base's pooler output, and the served "
            f"base {base.info.name!r} has no pooler weights; serve a checkpoint with its pooler, or "
            f"save the pooler with the adapter (modules_to_save=['classifier', 'pooler'])")
    else:
        weight, bias = base.pooler["weight"].float().clone(), base.pooler["bias"].float().clone()
    if weight.shape != (h, h) or bias.shape != (h,):
        raise IncompatibleAdapterError(f"the saved pooler is {tuple(weight.shape)}; the served "
                                       f"{base.info.name!r} has hidden size {h}")
    if POOLER in targets:
        (a, b), (r, alpha) = lora[POOLER], targets[POOLER]
        _check_shapes(POOLER, a, b, r, (h, h), base.info)
        scale = AdapterConfig.model_construct(r=r, alpha=alpha, use_rslora=bool(
            config.get("use_rslora"))).lora_scale()
        weight = weight + scale * (b @ a)  # tanh(W x + c + s B A x) = tanh((W + s B A) x + c)
    return {"pooler.weight": weight, "pooler.bias": bias}


def _head(peft_task: str, model_config: dict[str, Any], classifier: dict[str, Tensor | None],
          base: BaseContext, pooler: dict[str, Tensor]) -> tuple[HeadConfig, dict[str, Tensor]]:
    """The head's config and tensors: BertForSequenceClassification's classifier of the pooler
    output, or BertForTokenClassification's classifier of every token."""
    weight, bias = classifier["weight"], classifier["bias"]
    assert weight is not None and bias is not None
    outputs = weight.shape[0]
    task, labels = _task(peft_task, model_config, outputs)
    if weight.shape != (outputs, base.info.hidden_size) or bias.shape != (outputs,):
        raise InvalidAdapterError(f"classifier weight {tuple(weight.shape)} and bias "
                                  f"{tuple(bias.shape)} do not fit together")
    head = HeadConfig(task_type=task, labels=labels, layers=1, use_pooler=bool(pooler),
                      pooling="cls" if pooler else "mean")
    return head, {**pooler, "out.weight": weight, "out.bias": bias}


def _task(peft_task: str, model_config: dict[str, Any], outputs: int
          ) -> tuple[TaskType, list[str]]:
    """This service's task type and labels for a classifier of `outputs` rows: problem_type where
    config.json says it, else as transformers decides (one output: regression)."""
    problem = model_config.get("problem_type")
    if peft_task != SEQ_CLS:
        task: TaskType = "token_classification"
    elif problem is None:
        task = "regression" if outputs == 1 else "classification"
    else:
        known = [t for t, (p, kind) in TASKS.items() if (p, kind) == (SEQ_CLS, problem)]
        if not known:
            raise InvalidAdapterError(
                f"{MODEL_CONFIG_FILE}: problem_type {problem!r} is none of transformers' "
                f"{[kind for p, kind in TASKS.values() if p == SEQ_CLS]}")
        task = known[0]
    if task == "regression":
        if outputs != 1:
            raise UnsupportedAdapterError(
                f"a regression classifier with {outputs} outputs cannot be imported: regression "
                f"here predicts one value")
        return task, []
    labels = read_labels(model_config, outputs, MODEL_CONFIG_FILE)
    try:
        get_task(task).check_labels(labels)
    except ValueError as exc:
        raise UnsupportedAdapterError(f"{exc} (a classifier with one output is regression: "
                                      f"problem_type 'regression')") from exc
    return task, labels

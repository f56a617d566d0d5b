"""Which modules of PEFT's BertForSequenceClassification or BertForTokenClassification a LoRA
adapter_config.json targets, with each one's r and lora_alpha, resolved as PEFT resolves them
(peft.tuners.tuners_utils.check_target_module_exists, peft.utils.other.get_pattern_key)."""

from __future__ import annotations

import re
from typing import Any

from app.adapters.interop import CONFIG_FILE
from app.errors import InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import DEFAULT_LORA_TARGETS
from app.model.injection import BERT_LAYOUT

LAYERS = "bert.encoder.layer"
POOLER = "bert.pooler.dense"
CLASSIFIER = "classifier"
SEQ_CLS = "SEQ_CLS"  # the PEFT task type whose model (BertForSequenceClassification) has a pooler
SITE_PATHS = BERT_LAYOUT.sites  # LoRA site -> its module inside a layer
LAYER_RE = re.compile(rf"{re.escape(LAYERS)}\.(\d+)\.(.+)")
# The modules of a BertLayer, in named_modules() order: what a target pattern may match.
LAYER_MODULES = (
    "", "attention", "attention.self", "attention.self.query", "attention.self.key",
    "attention.self.value", "attention.self.dropout", "attention.output", "attention.output.dense",
    "attention.output.LayerNorm", "attention.output.dropout", "intermediate", "intermediate.dense",
    "intermediate.intermediate_act_fn", "output", "output.dense", "output.LayerNorm",
    "output.dropout")
EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm",
              "dropout")
DEFAULT_R = DEFAULT_ALPHA = 8  # LoraConfig's


def module_names(peft_task: str, num_layers: int) -> list[str]:
    """The names of every module of PEFT's BertFor* model, in named_modules() order: what
    target_modules is matched against."""
    names = ["", "bert", "bert.embeddings", *(f"bert.embeddings.{e}" for e in EMBEDDINGS),
             "bert.encoder", LAYERS]
    for i in range(num_layers):
        names += [f"{LAYERS}.{i}" + (f".{m}" if m else "") for m in LAYER_MODULES]
    if peft_task == SEQ_CLS:  # BertForTokenClassification has no pooler
        names += ["bert.pooler", POOLER, "bert.pooler.activation"]
    return [*names, "dropout", CLASSIFIER]


def site(name: str) -> tuple[int, str] | None:
    """(layer, LoRA site) of an encoder projection's module name; None for any other module."""
    match = LAYER_RE.fullmatch(name)
    if match is None or match[2] not in SITE_PATHS.values():
        return None
    return int(match[1]), next(s for s, p in SITE_PATHS.items() if p == match[2])


def resolve(config: dict[str, Any], peft_task: str, num_layers: int
            ) -> dict[str, tuple[int, float]]:
    """{module: (r, lora_alpha)} for every module PEFT wraps with LoRA; refused unless each is
    an encoder projection or the pooler's dense."""
    names = module_names(peft_task, num_layers)
    linear = {n for n in names if site(n) is not None or n == POOLER}
    if peft_task != SEQ_CLS:  # all-linear leaves out the classifier of SEQ_CLS models only
        linear.add(CLASSIFIER)
    try:
        targets = {n: _rank(config, n) for n in names if _targeted(config, n, linear)}
    except re.error as exc:
        raise InvalidAdapterError(f"{CONFIG_FILE}: a module pattern is not a valid regex ({exc})"
                                  ) from exc
    for name in targets:
        if site(name) is None and name != POOLER:
            raise UnsupportedAdapterError(
                f"target_modules {config.get('target_modules')!r} matches {name!r}: LoRA is "
                f"imported on query, key, value, attention.output.dense, intermediate.dense, "
                f"output.dense and the pooler's dense only")
    return targets


def _targeted(config: dict[str, Any], key: str, linear: set[str]) -> bool:
    """Whether PEFT wraps module `key` with LoRA."""
    exclude = config.get("exclude_modules")
    if isinstance(exclude, str) and re.fullmatch(exclude, key) or isinstance(exclude, list) and (
            key in exclude or any(key.endswith(f".{e}") for e in exclude)):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.get("modules_to_save") or []):
        return False  # PEFT never puts LoRA inside a module it saves whole
    targets = config.get("target_modules")
    if targets is None:  # PEFT's default for BERT
        targets = list(DEFAULT_LORA_TARGETS)
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return key in linear
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    return any(key.endswith(f".{t}") for t in targets) and _in_layers(config, key)


def _in_layers(config: dict[str, Any], key: str) -> bool:
    """layers_to_transform, with the layer index found in `key` as PEFT finds it."""
    wanted = config.get("layers_to_transform")
    if wanted is None or wanted == []:
        return True
    patterns = config.get("layers_pattern")
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
        match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
        if match is not None:
            break
    if match is None:
        return False
    index = int(match["idx"])
    return index == wanted if isinstance(wanted, int) else index in wanted


def _rank(config: dict[str, Any], key: str) -> tuple[int, float]:
    """(r, lora_alpha) of the LoRA on module `key`: rank_pattern and alpha_pattern first."""
    return (int(_pattern(config, "rank_pattern", config.get("r", DEFAULT_R), key)),
            float(_pattern(config, "alpha_pattern", config.get("lora_alpha", DEFAULT_ALPHA), key)))


def _pattern(config: dict[str, Any], option: str, default: Any, key: str) -> Any:
    pattern = config.get(option) or {}
    for p in pattern:
        if re.match(rf"(.*\.)?({p})$", key):
            return pattern[p]
    return pattern.get(key, default)

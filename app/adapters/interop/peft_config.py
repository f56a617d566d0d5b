"""What a PEFT LoRA adapter_config.json says: whether its options are computed here exactly, and
which modules of PEFT's BertForSequenceClassification or BertForTokenClassification it targets,
with each one's r and lora_alpha, resolved as PEFT resolves them
(peft.tuners.tuners_utils.check_target_module_exists, peft.utils.other.get_pattern_key)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from app.adapters.interop import CONFIG_FILE
from app.errors import InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import DEFAULT_LORA_TARGETS
from app.model.injection import BERT_LAYOUT
from app.tasks import TaskType

LAYERS = "bert.encoder.layer"
POOLER = "bert.pooler.dense"
CLASSIFIER = "classifier"
SEQ_CLS = "SEQ_CLS"  # the PEFT task type whose model (BertForSequenceClassification) has a pooler
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT reads the first found
MODEL_CONFIG_FILE = "config.json"
KEY_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# This service's task types that PEFT's BertFor* models compute: (PEFT task type, problem_type).
TASKS: dict[TaskType, tuple[str, str | None]] = {
    "classification": (SEQ_CLS, "single_label_classification"),
    "multi_label_classification": (SEQ_CLS, "multi_label_classification"),
    "regression": (SEQ_CLS, "regression"),
    "token_classification": ("TOKEN_CLS", None),
}
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
# PEFT task type -> the transformers model it wraps (the only two whose heads are computed here).
PEFT_TASKS = {SEQ_CLS: "BertForSequenceClassification", "TOKEN_CLS": "BertForTokenClassification"}
# init_lora_weights values that leave the base weights and the LoRA computation as they are (the
# others, pissa, olora, corda, loftq, lora_ga, change the base weights or add a variant).
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
SUPPORTED = (
    "supported: peft_type LORA with task_type SEQ_CLS or TOKEN_CLS on a BERT base; r, lora_alpha, "
    "use_rslora, lora_dropout; target_modules (names or a regex) among query, key, value, "
    "attention.output.dense, intermediate.dense, output.dense and the pooler's dense, with "
    "layers_to_transform, layers_pattern and exclude_modules; rank_pattern and alpha_pattern only "
    "where they give every projection the same r and alpha; bias 'none'; modules_to_save "
    "classifier (and pooler)")


def _off(value: Any) -> bool:
    return value in (None, False, "", [], {})


# Options that change what an adapter computes: the values computed here, and how to say them.
OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bias": (lambda v: v in (None, "none"), "'none' (biases trained by LoRA are not imported)"),
    "init_lora_weights": (lambda v: v in PLAIN_INITS,
                          f"one of {list(PLAIN_INITS)}; convert the others with save_pretrained("
                          f"path_initial_model_for_weight_conversion=...) first"),
    **{name: (_off, "false") for name in (
        "use_dora", "fan_in_fan_out", "lora_bias", "use_qalora", "layer_replication",
        "target_parameters", "trainable_token_indices", "megatron_config", "alora_invocation_tokens",
        "velora_config", "kasa_config", "monteclora_config", "use_bdlora", "arrow_config")},
}
# Options read here, or that only matter while training.
HANDLED = frozenset({
    "peft_type", "task_type", "r", "lora_alpha", "use_rslora", "lora_dropout", "target_modules",
    "exclude_modules", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
    "modules_to_save", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
    "peft_version", "megatron_core", "qalora_group_size", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "runtime_config", "ensure_weight_tying"})
# The types of the options read here, and of their list items or dict values (else str).
TYPES: dict[str, type | tuple[type, ...]] = {
    "r": int, "lora_alpha": (int, float), "use_rslora": (bool, type(None)),
    "lora_dropout": (int, float, type(None)), "target_modules": (list, str, type(None)),
    "exclude_modules": (list, str, type(None)), "layers_to_transform": (int, list, type(None)),
    "layers_pattern": (list, str, type(None)), "rank_pattern": (dict, type(None)),
    "alpha_pattern": (dict, type(None)), "modules_to_save": (list, type(None)),
}
ITEM_TYPES: dict[str, type | tuple[type, ...]] = {
    "layers_to_transform": int, "rank_pattern": int, "alpha_pattern": (int, float)}


def check_options(config: dict[str, Any]) -> None:
    """Refuse a config with an option not computed here exactly, or of the wrong type."""
    if config.get("peft_type") != "LORA":
        raise UnsupportedAdapterError(
            f"PEFT adapters of type {config.get('peft_type')!r} cannot be imported; {SUPPORTED}")
    task = config.get("task_type")
    if task not in PEFT_TASKS:
        raise UnsupportedAdapterError(
            f"PEFT task_type {task!r} cannot be imported: supported are "
            + ", ".join(f"{k} ({v})" for k, v in PEFT_TASKS.items())
            + "; save with LoraConfig(task_type=...) set to one of them")
    for key, allowed in TYPES.items():
        value = config.get(key)
        items = value if isinstance(value, list) else value.values() if isinstance(value, dict) else []
        if key in config and not (isinstance(value, allowed) and all(
                isinstance(v, ITEM_TYPES.get(key, str)) for v in items)):
            raise InvalidAdapterError(f"{CONFIG_FILE}: {key} is {value!r}, not of PEFT's type")
    if config.get("r", DEFAULT_R) < 1:
        raise InvalidAdapterError(f"{CONFIG_FILE}: r is {config['r']}; a LoRA rank is at least 1")
    for key, value in config.items():
        rule = OPTIONS.get(key)
        if rule is not None and not rule[0](value):
            raise UnsupportedAdapterError(
                f"PEFT option {key}={value!r} cannot be imported exactly (supported: {rule[1]}); "
                f"{SUPPORTED}")
        if rule is None and key not in HANDLED and not _off(value):
            raise UnsupportedAdapterError(
                f"PEFT option {key}={value!r} is not known to this importer, which refuses what "
                f"it cannot compute exactly; {SUPPORTED}")


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

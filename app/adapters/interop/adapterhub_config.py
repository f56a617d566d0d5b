"""What an AdapterHub adapter_config.json says, in this service's terms: the bottleneck options
that change the math (mapped onto AdapterConfig's recipe), the ones that act only in training
(ignored) and the rest (refused by name), and the library's activation names."""

from __future__ import annotations

from typing import Any, NamedTuple

from app.errors import InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import Activation, Recipe

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


def unsupported(what: str) -> UnsupportedAdapterError:
    return UnsupportedAdapterError(f"AdapterHub adapter: {what}; {SUPPORTED}")


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
        raise unsupported(f"architecture {architecture!r} is not supported{hint}")
    unknown = sorted(set(config) - MAPPED - IGNORED - set(REFUSED))
    if unknown:
        raise unsupported(f"options {unknown} are unknown to this converter (it knows those of "
                           f"{LIBRARY_VERSION})")
    for option, what in REFUSED.items():
        if config.get(option):
            raise unsupported(f"{option}={config[option]!r} ({what}) is not supported")
    if config.get("output_adapter") is not True:
        raise unsupported("output_adapter=false (adapters only after attention) is not supported")
    act = activation(config.get("non_linearity"), "non_linearity", legacy)
    if act is None:
        raise unsupported(f"non_linearity {config.get('non_linearity')!r} is not supported")
    fields: dict[str, Any] = {"activation": act,
                              "placement": "houlsby" if config.get("mh_adapter") else "pfeiffer"}
    for flag, default in FLAGS.items():
        value = config.get(flag, default)
        if not isinstance(value, bool):
            raise InvalidAdapterError(f"AdapterHub option {flag} must be true or false, got {value!r}")
        fields[flag] = value
    residual = config.get("residual_before_ln", True)
    if residual not in (True, False, "post_add"):
        raise unsupported(f"residual_before_ln={residual!r} is not supported")
    fields["residual_before_ln"] = residual
    scaling = config.get("scaling", 1.0)
    learned = scaling in ("learned", "channel")
    if not learned and (isinstance(scaling, bool) or not isinstance(scaling, int | float)):
        raise unsupported(f"scaling={scaling!r} is not supported")
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

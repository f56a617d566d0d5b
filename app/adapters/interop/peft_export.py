"""A stored LoRA adapter of this service as the files PEFT loads: adapter_config.json,
adapter_model.safetensors and config.json with the label fields (see app/adapters/interop/peft.py
for how a user loads them)."""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import Tensor

from app.adapters.format import AdapterMetadata, split
from app.adapters.interop import CONFIG_FILE, BaseContext
from app.adapters.interop.peft_config import (
    CLASSIFIER,
    KEY_PREFIX,
    LAYERS,
    MODEL_CONFIG_FILE,
    POOLER,
    SEQ_CLS,
    SITE_PATHS,
    TASKS,
    WEIGHTS_FILES,
)
from app.errors import UnsupportedAdapterError


def export(meta: AdapterMetadata, tensors: dict[str, Tensor], base: BaseContext
           ) -> dict[str, bytes]:
    """adapter_config.json, adapter_model.safetensors and config.json (the label fields) that
    PeftModel.from_pretrained loads onto BertForSequenceClassification or
    BertForTokenClassification (`base` is not needed: the head carries its own pooler)."""
    config = meta.adapter_config
    if config.method != "lora":
        raise UnsupportedAdapterError(
            f"adapter {meta.name!r} is a bottleneck adapter, which PEFT cannot load: export it "
            f"with format=adapterhub")
    if meta.base_model.model_type != "bert":
        raise UnsupportedAdapterError(
            f"PEFT exports name BERT modules (bert.*); adapter {meta.name!r} is for a "
            f"{meta.base_model.model_type!r} base")
    adapter, head = split(tensors)
    peft_task, problem = _peft_task(meta, set(head))
    weights = {f"{CLASSIFIER}.{p}": head[f"out.{p}"] for p in ("weight", "bias")}
    if "pooler.weight" in head:
        weights |= {f"{POOLER}.{p}": head[f"pooler.{p}"] for p in ("weight", "bias")}
    for layer in range(meta.base_model.num_layers):
        for name in config.sites():
            for part in ("A", "B"):
                weights[f"{LAYERS}.{layer}.{SITE_PATHS[name]}.lora_{part}.weight"] = (
                    adapter[f"layers.{layer}.lora.{name}.{part}"])
    paths = "|".join(re.escape(SITE_PATHS[s]) for s in config.sites())
    peft_config = {
        "peft_type": "LORA", "task_type": peft_task, "base_model_name_or_path": meta.base_model.name,
        "r": config.r, "lora_alpha": int(config.alpha) if config.alpha.is_integer() else config.alpha,
        "use_rslora": config.use_rslora, "lora_dropout": config.lora_dropout,
        "target_modules": rf"{re.escape(LAYERS)}\.\d+\.({paths})", "bias": "none",
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": [CLASSIFIER, *(["pooler"] if "pooler.weight" in head else [])]}
    labels = meta.labels or ["LABEL_0"]  # regression: transformers' name of its one output
    model_config: dict[str, Any] = {"id2label": dict(enumerate(labels)),
                                    "label2id": {name: i for i, name in enumerate(labels)}}
    if problem is not None:
        model_config["problem_type"] = problem
    data = {KEY_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in weights.items()}
    return {CONFIG_FILE: json.dumps(peft_config, indent=2).encode(),
            WEIGHTS_FILES[0]: st_save(data, metadata={"format": "pt"}),
            MODEL_CONFIG_FILE: json.dumps(model_config, indent=2).encode()}


def _peft_task(meta: AdapterMetadata, head: set[str]) -> tuple[str, str | None]:
    """(PEFT task type, transformers problem_type) of a head PEFT's BertFor* models compute."""
    if meta.task_type not in TASKS:
        raise UnsupportedAdapterError(
            f"adapter {meta.name!r} is {meta.task_type}: PEFT export supports "
            f"{', '.join(f'{t} ({p})' for t, (p, _) in TASKS.items())}")
    peft_task, problem = TASKS[meta.task_type]
    if peft_task == SEQ_CLS and head != {"pooler.weight", "pooler.bias", "out.weight", "out.bias"}:
        raise UnsupportedAdapterError(
            f"adapter {meta.name!r} has a {meta.task_type} head BertForSequenceClassification "
            f"cannot compute: it computes classifier(tanh(pooler(first token))), a head with "
            f"use_pooler=true and layers=1 (this one: use_pooler={meta.head_config.use_pooler}, "
            f"layers={meta.head_config.layers})")
    if peft_task != SEQ_CLS and head != {"out.weight", "out.bias"}:
        raise UnsupportedAdapterError(
            f"adapter {meta.name!r} has a tagging head with a hidden layer; "
            f"BertForTokenClassification computes one classifier per token (layers=1)")
    return peft_task, problem

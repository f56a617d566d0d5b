"""PEFT LoRA adapters made with PEFT itself: imported, they answer as PEFT does (alone and mixed in
the bank); exported, PEFT loads them and answers as this service does; the rest is refused."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.testing import assert_close
from transformers import BertForSequenceClassification, BertForTokenClassification

from app.adapters import interop
from app.adapters.format import decode, encode, join, new_metadata, split
from app.adapters.interop import BaseContext, Converted
from app.adapters.interop.peft import convert, export
from app.adapters.interop.peft_config import module_names
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import AdapterConfig, AdapterSet
from app.model.bank import AdapterBank
from app.model.encoder import FrozenEncoder
from app.model.tokenization import EncodedBatch
from app.tasks import Head, HeadConfig, build_head
from tests.conftest import random_adapter

TEXTS = ["the film was good", "john visited paris today and it was fun", "bad", "not very fun"]
PAIRS = [None, "mary works at acme corp", None, "it was slow"]
ATOL = 1e-4
MODELS = {"SEQ_CLS": BertForSequenceClassification, "TOKEN_CLS": BertForTokenClassification}


def _batch(encoder: FrozenEncoder) -> EncodedBatch:
    return encoder.tokenizer.collate(encoder.tokenizer.encode(TEXTS, PAIRS))


def _base(encoder: FrozenEncoder, **info: Any) -> BaseContext:
    return BaseContext(dataclasses.replace(encoder.info, **info), encoder.model.config.vocab_size,
                       encoder.pooler)


def _peft(model_dir: Path, task: str = "SEQ_CLS", num_labels: int = 3, seed: int = 0,
          **lora: Any) -> PeftModel:
    """A PEFT model of the tiny BERT with random LoRA and classifier weights (PEFT starts lora_B
    at zero, which would hide every mistake)."""
    torch.manual_seed(seed)
    model = MODELS[task].from_pretrained(model_dir, num_labels=num_labels)
    peft_model = get_peft_model(model, LoraConfig(task_type=task, **lora))
    for p in peft_model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.3)
    return peft_model.eval()


def _save(peft_model: PeftModel, directory: Path, model_config: dict[str, Any] | None = None
          ) -> Path:
    peft_model.save_pretrained(directory)
    if model_config is not None:
        (directory / "config.json").write_text(json.dumps(model_config))
    return directory


@torch.inference_mode()
def _outputs(model: torch.nn.Module, batch: EncodedBatch) -> tuple[Tensor, Tensor]:
    """PEFT's (or transformers') last hidden states (B, T, H) and logits."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                token_type_ids=batch.token_type_ids, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def _answers(model: torch.nn.Module, batch: EncodedBatch, task_type: str) -> Tensor:
    """PEFT's outputs as this service serves them: probabilities, or values."""
    logits = _outputs(model, batch)[1]
    if task_type == "multi_label_classification":
        return logits.sigmoid()
    return logits.squeeze(-1) if task_type == "regression" else logits.softmax(-1)


def _without_lora(peft_model: PeftModel, batch: EncodedBatch) -> tuple[Tensor, Tensor]:
    """The PEFT model's outputs with every lora_B zeroed: what the LoRA changes shows against it."""
    bare = copy.deepcopy(peft_model)
    for name, p in bare.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(p)
    return _outputs(bare, batch)


def _parts(encoder: FrozenEncoder, conv: Converted) -> tuple[AdapterSet, Head]:
    adapter_tensors, head_tensors = split(conv.tensors)
    adapter = AdapterSet(conv.adapter, encoder.info.dims)
    adapter.load_state_dict(adapter_tensors)
    head = build_head(conv.head, encoder.info.hidden_size)
    head.load_state_dict(head_tensors)
    return adapter.eval(), head.eval()


@torch.inference_mode()
def _served(encoder: FrozenEncoder, conv: Converted, batch: EncodedBatch
            ) -> tuple[Tensor, Tensor, Tensor]:
    """This service's hidden states, head outputs (logits, values) and served answers."""
    adapter, head = _parts(encoder, conv)
    hidden = encoder.forward(batch, adapter)
    return hidden, head(hidden, batch.attention_mask), head.predict(hidden, batch.attention_mask)


# (id, PEFT task, labels, LoraConfig options, expected sites, r, alpha)
CASES: list[tuple[str, str, int, dict[str, Any], list[str], int, float]] = [
    ("peft-default-targets", "SEQ_CLS", 3, {}, ["query", "value"], 8, 8),
    ("rank-and-alpha", "SEQ_CLS", 2, {"r": 2, "lora_alpha": 5, "target_modules": ["key"]},
     ["key"], 2, 5),
    ("query", "SEQ_CLS", 3, {"r": 3, "target_modules": ["query"]}, ["query"], 3, 8),
    ("value", "SEQ_CLS", 3, {"r": 3, "target_modules": ["value"]}, ["value"], 3, 8),
    ("attention-output", "SEQ_CLS", 3, {"target_modules": ["attention.output.dense"]},
     ["attn_output"], 8, 8),
    ("intermediate", "SEQ_CLS", 3, {"r": 5, "target_modules": ["intermediate.dense"]},
     ["intermediate"], 5, 8),
    # a name matches every module ending in it: both output projections
    ("output.dense-name", "SEQ_CLS", 3, {"r": 2, "target_modules": ["output.dense"]},
     ["attn_output", "output"], 2, 8),
    ("output-regex", "SEQ_CLS", 3, {"r": 2, "target_modules": r".*\.layer\.\d+\.output\.dense"},
     ["output"], 2, 8),
    ("all-six-rslora", "SEQ_CLS", 4, {
        "r": 4, "lora_alpha": 3, "use_rslora": True, "target_modules": [
            "query", "key", "value", "attention.output.dense", "intermediate.dense",
            "output.dense"]}, ["query", "key", "value", "attn_output", "intermediate", "output"],
     4, 3),
    ("regex", "SEQ_CLS", 3, {
        "r": 4, "target_modules": r"bert\.encoder\.layer\.1\.attention\.self\.(key|value)"},
     ["key", "value"], 4, 8),
    # bare "dense": the three dense projections of each layer and the pooler's, folded into the head
    ("bare-dense-with-pooler", "SEQ_CLS", 3, {"r": 3, "lora_alpha": 7, "target_modules": ["dense"]},
     ["attn_output", "intermediate", "output"], 3, 7),
    ("pooler-only", "SEQ_CLS", 2, {"r": 3, "target_modules": ["pooler.dense"]}, ["query"], 1, 1),
    ("all-linear", "SEQ_CLS", 3, {"r": 2, "target_modules": "all-linear"},
     ["query", "key", "value", "attn_output", "intermediate", "output"], 2, 8),
    ("layers-to-transform", "SEQ_CLS", 3, {
        "r": 3, "target_modules": ["query", "intermediate.dense"], "layers_to_transform": [1]},
     ["query", "intermediate"], 3, 8),
    ("layer-index-and-pattern", "SEQ_CLS", 3, {
        "target_modules": ["value", "dense"], "layers_to_transform": 0, "layers_pattern": "layer"},
     ["value", "attn_output", "intermediate", "output"], 8, 8),
    ("exclude-modules", "SEQ_CLS", 3, {
        "target_modules": ["query", "value"],
        "exclude_modules": ["bert.encoder.layer.0.attention.self.value"]}, ["query", "value"], 8, 8),
    ("exclude-regex", "SEQ_CLS", 3, {
        "r": 2, "target_modules": ["value", "intermediate.dense"],
        "exclude_modules": r".*layer\.1\.intermediate.*"}, ["value", "intermediate"], 2, 8),
    ("uniform-rank-pattern", "SEQ_CLS", 3, {
        "r": 2, "target_modules": ["value"], "rank_pattern": {"value": 6},
        "alpha_pattern": {"value": 4}}, ["value"], 6, 4),
    ("pooler-saved", "SEQ_CLS", 3, {
        "r": 2, "target_modules": ["query"], "modules_to_save": ["classifier", "pooler"],
        "init_lora_weights": "gaussian", "lora_dropout": 0.1}, ["query"], 2, 8),
    ("regression", "SEQ_CLS", 1, {"r": 4, "target_modules": ["query", "output.dense"]},
     ["query", "attn_output", "output"], 4, 8),
    ("token-classification", "TOKEN_CLS", 5, {"r": 3, "target_modules": ["query", "dense"]},
     ["query", "attn_output", "intermediate", "output"], 3, 8),
]


@pytest.mark.parametrize(("task", "labels", "options", "sites", "r", "alpha"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_imported_adapter_answers_as_peft(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path, task: str, labels: int,
        options: dict[str, Any], sites: list[str], r: int, alpha: float) -> None:
    peft_model = _peft(tiny_model_dir, task, labels, **options)
    conv = convert(_save(peft_model, tmp_path), _base(encoder))
    assert (conv.adapter.method, conv.adapter.target_modules) == ("lora", sites)
    assert (conv.adapter.r, conv.adapter.alpha) == (r, alpha)
    assert conv.adapter.use_rslora == bool(options.get("use_rslora"))
    expected_type = {"TOKEN_CLS": "token_classification"}.get(
        task, "regression" if labels == 1 else "classification")
    assert conv.head.task_type == expected_type
    assert conv.head.labels == ([] if labels == 1 else [f"LABEL_{i}" for i in range(labels)])
    assert conv.head.use_pooler == (task == "SEQ_CLS") and conv.head.layers == 1
    meta = new_metadata("imported", conv.head, conv.adapter, encoder.info)
    decode(encode(meta, conv.tensors), meta, "import")  # what the store checks: names, shapes
    batch = _batch(encoder)
    hidden, raw, answers = _served(encoder, conv, batch)
    peft_hidden, logits = _outputs(peft_model, batch)
    assert_close(hidden, peft_hidden, atol=ATOL, rtol=0)
    assert_close(raw, logits.squeeze(-1) if labels == 1 else logits, atol=ATOL, rtol=0)
    assert_close(answers, _answers(peft_model, batch, expected_type), atol=ATOL, rtol=0)
    bare_hidden, bare_logits = _without_lora(peft_model, batch)  # the LoRA matters
    changed = (peft_hidden - bare_hidden).abs().max() + (logits - bare_logits).abs().max()
    assert changed > 10 * ATOL


def test_import_records_the_source_and_the_claimed_base(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path) -> None:
    peft_model = _peft(tiny_model_dir, target_modules=["query"])
    conv = convert(_save(peft_model, tmp_path), _base(encoder))
    assert conv.source["library"] == "peft" and conv.source["task_type"] == "SEQ_CLS"
    assert conv.source["files"] == ["adapter_config.json", "adapter_model.safetensors"]
    assert conv.source["config"]["target_modules"] == ["query"]
    assert conv.base.name == str(tiny_model_dir)
    assert (conv.base.hidden_size, conv.base.num_layers) == (32, 2)


@pytest.mark.parametrize(("model_config", "task_type", "labels"), [
    ({"id2label": {"0": "neg", "1": "neutral", "2": "pos"}, "model_type": "bert",
      "num_hidden_layers": 2, "vocab_size": 93}, "classification", ["neg", "neutral", "pos"]),
    ({"id2label": {"0": "score"}, "problem_type": "regression"}, "regression", []),
    ({"id2label": {"0": "sports", "1": "politics", "2": "music"},
      "problem_type": "multi_label_classification"}, "multi_label_classification",
     ["sports", "politics", "music"]),
    ({"problem_type": "multi_label_classification", "id2label": {"0": "spam"}},
     "multi_label_classification", ["spam"]),
], ids=["labels", "regression", "multi-label", "one-label-multi-label"])
def test_labels_and_problem_type_come_from_a_config_json(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path,
        model_config: dict[str, Any], task_type: str, labels: list[str]) -> None:
    n = len(model_config["id2label"])
    peft_model = _peft(tiny_model_dir, num_labels=n, target_modules=["value"])
    conv = convert(_save(peft_model, tmp_path, model_config), _base(encoder))
    assert (conv.head.task_type, conv.head.labels) == (task_type, labels)
    assert "config.json" in conv.source["files"]
    assert conv.base.vocab_size == model_config.get("vocab_size")
    batch = _batch(encoder)
    assert_close(_served(encoder, conv, batch)[2], _answers(peft_model, batch, task_type),
                 atol=ATOL, rtol=0)


def test_all_linear_as_written_resolves_as_peft_expands_it(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = _save(_peft(tiny_model_dir, r=2, target_modules="all-linear"), tmp_path)
    expanded = convert(directory, _base(encoder))  # PEFT saves the module names it expanded
    _patch(directory, target_modules="all-linear")
    written = convert(directory, _base(encoder))
    assert written.adapter == expanded.adapter
    for name, tensor in expanded.tensors.items():
        assert torch.equal(written.tensors[name], tensor), name


def test_weights_saved_as_bin_import_too(encoder: FrozenEncoder, tiny_model_dir: Path,
                                         tmp_path: Path) -> None:
    peft_model = _peft(tiny_model_dir, r=2, target_modules=["key"])
    peft_model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    conv = convert(tmp_path, _base(encoder))
    assert conv.source["files"][1] == "adapter_model.bin"
    batch = _batch(encoder)
    assert_close(_served(encoder, conv, batch)[2], _answers(peft_model, batch, "classification"),
                 atol=ATOL, rtol=0)


@torch.inference_mode()
def test_imported_adapters_mixed_in_the_bank_answer_as_peft_per_row(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path) -> None:
    configs = [{"r": 2, "target_modules": ["query", "value"]},
               {"r": 5, "lora_alpha": 3, "use_rslora": True, "target_modules": ["dense"]},
               {"r": 3, "target_modules": ["key", "intermediate.dense"], "layers_to_transform": [0]}]
    peft_models = [_peft(tiny_model_dir, num_labels=2 + i, seed=i, **c)
                   for i, c in enumerate(configs)]
    convs = [convert(_save(m, tmp_path / str(i)), _base(encoder))
             for i, m in enumerate(peft_models)]
    bank = AdapterBank(encoder.info.dims, encoder.device, encoder.dtype)
    slots = [bank.add(c.adapter, split(c.tensors)[0]) for c in convs]
    batch = _batch(encoder)
    for assignment in ([0, 1, 2, 0], [2, 2, 1, 0], [1, 1, 1, 1]):
        hidden = encoder.forward(batch, bank.routing([slots[i] for i in assignment]))
        for row, i in enumerate(assignment):
            head = _parts(encoder, convs[i])[1]
            ours = head.predict(hidden[row:row + 1], batch.attention_mask[row:row + 1])
            expected = _answers(peft_models[i], batch, "classification")[row:row + 1]
            assert_close(ours, expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------- export
def _write(files: dict[str, bytes], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _load_exported(model_dir: Path, directory: Path, task: str) -> PeftModel:
    """What the module docstring tells a user to do with an exported adapter."""
    labels = json.loads((directory / "config.json").read_text())
    model = MODELS[task].from_pretrained(model_dir, **labels)
    return PeftModel.from_pretrained(model, directory).eval()


@pytest.mark.parametrize(("task", "labels", "options", "model_config"), [
    ("SEQ_CLS", 3, {"r": 3, "lora_alpha": 7, "target_modules": ["dense"]}, None),
    ("SEQ_CLS", 1, {"r": 2, "use_rslora": True, "target_modules": ["query", "output.dense"],
                    "layers_to_transform": [1]}, None),
    ("SEQ_CLS", 2, {"r": 2, "target_modules": ["value"]},
     {"problem_type": "multi_label_classification", "id2label": {"0": "x", "1": "y"}}),
    ("TOKEN_CLS", 4, {"r": 4, "target_modules": ["key", "value", "intermediate.dense"]}, None),
], ids=["classification-pooler-lora", "regression", "multi-label", "token-classification"])
def test_exported_import_loads_in_peft_with_the_same_answers(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path, task: str, labels: int,
        options: dict[str, Any], model_config: dict[str, Any] | None) -> None:
    original = _peft(tiny_model_dir, task, labels, **options)
    base = _base(encoder)
    conv = convert(_save(original, tmp_path / "peft", model_config), base)
    meta = new_metadata("imported", conv.head, conv.adapter, encoder.info)
    exported = _write(export(meta, conv.tensors, base), tmp_path / "export")
    assert sorted(p.name for p in exported.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "config.json"]
    batch = _batch(encoder)
    reloaded = _load_exported(tiny_model_dir, exported, task)
    assert_close(_answers(reloaded, batch, conv.head.task_type),
                 _answers(original, batch, conv.head.task_type), atol=ATOL, rtol=0)
    again = convert(exported, base)  # and back: the same adapter
    assert (again.adapter, again.head) == (conv.adapter, conv.head)
    assert again.tensors.keys() == conv.tensors.keys()
    for name, tensor in conv.tensors.items():
        assert_close(again.tensors[name], tensor, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("config", "head"), [
    (AdapterConfig(method="lora", r=3, alpha=5, target_modules=["value", "output"]),
     HeadConfig(task_type="classification", labels=["a", "b", "c"], use_pooler=True, layers=1)),
    (AdapterConfig(method="lora", r=6, alpha=2.5, use_rslora=True,
                   target_modules=["query", "key", "attn_output", "intermediate"]),
     HeadConfig(task_type="regression", use_pooler=True, layers=1)),
    (AdapterConfig(method="lora", r=4, alpha=4, target_modules=["query", "intermediate"]),
     HeadConfig(task_type="multi_label_classification", labels=["x", "y"], use_pooler=True,
                layers=1)),
    (AdapterConfig(method="lora", r=2, target_modules=["output"]),
     HeadConfig(task_type="token_classification", labels=["O", "B-PER", "I-PER"])),
], ids=["classification", "regression-rslora", "multi-label", "token-classification"])
def test_an_adapter_of_this_service_exports_to_peft(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path, config: AdapterConfig,
        head: HeadConfig) -> None:
    adapter, head_module, _ = random_adapter(encoder, config, head, seed=3)
    tensors = join(adapter.state_dict(), head_module.state_dict())
    meta = new_metadata("ours", head, config, encoder.info)
    directory = _write(export(meta, tensors, _base(encoder)), tmp_path)
    peft_config = json.loads((directory / "adapter_config.json").read_text())
    assert (peft_config["r"], peft_config["lora_alpha"]) == (config.r, config.alpha)
    task = "TOKEN_CLS" if head.task_type == "token_classification" else "SEQ_CLS"
    assert peft_config["task_type"] == task
    reloaded = _load_exported(tiny_model_dir, directory, task)
    assert reloaded.config.id2label == {str(i): n for i, n in enumerate(head.labels or ["LABEL_0"])}
    batch = _batch(encoder)
    with torch.inference_mode():
        ours = head_module.predict(encoder.forward(batch, adapter), batch.attention_mask)
    assert_close(_answers(reloaded, batch, head.task_type), ours, atol=ATOL, rtol=0)


EXPORT_REFUSALS = [
    ("bottleneck", AdapterConfig(), HeadConfig(task_type="classification", labels=["a", "b"]),
     "bottleneck adapter.*format=adapterhub"),
    ("mean-pooled-head", AdapterConfig(method="lora"),
     HeadConfig(task_type="classification", labels=["a", "b"]),
     r"use_pooler=true and layers=1 \(this one: use_pooler=False, layers=None\)"),
    ("two-layer-pooler-head", AdapterConfig(method="lora"),
     HeadConfig(task_type="regression", use_pooler=True, layers=2),
     r"use_pooler=true and layers=1 \(this one: use_pooler=True, layers=2\)"),
    ("tagging-head-with-hidden-layer", AdapterConfig(method="lora"),
     HeadConfig(task_type="token_classification", labels=["O", "B-X"], layers=2),
     r"hidden layer; BertForTokenClassification computes one classifier per token \(layers=1\)"),
    ("question-answering", AdapterConfig(method="lora"),
     HeadConfig(task_type="question_answering"),
     r"is question_answering: PEFT export supports classification \(SEQ_CLS\), "
     r"multi_label_classification \(SEQ_CLS\), regression \(SEQ_CLS\), token_classification"),
]


@pytest.mark.parametrize(("config", "head", "message"), [c[1:] for c in EXPORT_REFUSALS],
                         ids=[c[0] for c in EXPORT_REFUSALS])
def test_export_refuses_what_peft_cannot_compute(encoder: FrozenEncoder, config: AdapterConfig,
                                                 head: HeadConfig, message: str) -> None:
    adapter, head_module, _ = random_adapter(encoder, config, head)
    tensors = join(adapter.state_dict(), head_module.state_dict())
    with pytest.raises(UnsupportedAdapterError, match=message):
        export(new_metadata("x", head, config, encoder.info), tensors, _base(encoder))


def test_export_refuses_a_base_that_is_not_bert(encoder: FrozenEncoder) -> None:
    config = AdapterConfig(method="lora")
    head = HeadConfig(task_type="classification", labels=["a", "b"], use_pooler=True, layers=1)
    adapter, head_module, _ = random_adapter(encoder, config, head)
    tensors = join(adapter.state_dict(), head_module.state_dict())
    info = dataclasses.replace(encoder.info, model_type="distilbert")
    with pytest.raises(UnsupportedAdapterError, match="is for a 'distilbert' base"):
        export(new_metadata("x", head, config, info), tensors, _base(encoder))


# -------------------------------------------------------------------------------- refusals
def _patch(directory: Path, **changes: Any) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_weights(directory: Path, part: str) -> None:
    path = directory / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if part not in k}, path)


Setup = Callable[[Path], None]
# (id, LoraConfig options, what is done to the saved files, error, message)
IMPORT_REFUSALS: list[tuple[str, dict[str, Any], Setup | None, type[Exception], str]] = [
    ("dora", {"use_dora": True}, None, UnsupportedAdapterError,
     r"PEFT option use_dora=True cannot be imported exactly \(supported: false\)"),
    ("lora-bias", {"bias": "all"}, None, UnsupportedAdapterError,
     r"PEFT option bias='all' cannot be imported exactly \(supported: 'none'"),
    ("uneven-rank-pattern", {"r": 4, "target_modules": ["query", "key"], "rank_pattern": {"key": 2}},
     None, UnsupportedAdapterError, r"different \(r, lora_alpha\): \[\(2, 8.0\), \(4, 8.0\)\]"),
    ("uneven-alpha-pattern", {"target_modules": ["query", "key"], "alpha_pattern": {"query": 3}},
     None, UnsupportedAdapterError, r"different \(r, lora_alpha\): \[\(8, 3.0\), \(8, 8.0\)\]"),
    ("embedding-target", {"target_modules": ["word_embeddings", "query"]}, None,
     UnsupportedAdapterError, "matches 'bert.embeddings.word_embeddings': LoRA is imported on query"),
    ("extra-modules-to-save", {"target_modules": ["query"],
                               "modules_to_save": ["classifier", "attention.output.LayerNorm"]},
     None, UnsupportedAdapterError, r"weights that cannot be placed: \['bert.encoder.layer.0.attention"),
    ("rank-above-the-maximum", {"r": 300, "target_modules": ["query"]}, None,
     UnsupportedAdapterError, "LoRA rank 300 is greater than the maximum 256"),
    ("other-peft-type", {}, lambda d: _patch(d, peft_type="IA3"), UnsupportedAdapterError,
     "PEFT adapters of type 'IA3' cannot be imported"),
    ("causal-lm", {}, lambda d: _patch(d, task_type="CAUSAL_LM"), UnsupportedAdapterError,
     r"task_type 'CAUSAL_LM' cannot be imported: supported are SEQ_CLS \(BertForSequence"),
    ("no-task-type", {}, lambda d: _patch(d, task_type=None), UnsupportedAdapterError,
     "task_type None cannot be imported"),
    ("fan-in-fan-out", {}, lambda d: _patch(d, fan_in_fan_out=True), UnsupportedAdapterError,
     "fan_in_fan_out=True cannot be imported exactly"),
    ("pissa", {}, lambda d: _patch(d, init_lora_weights="pissa"), UnsupportedAdapterError,
     "init_lora_weights='pissa' cannot be imported exactly .*path_initial_model_for_weight_conversion"),
    ("layer-replication", {}, lambda d: _patch(d, layer_replication=[[0, 2], [1, 2]]),
     UnsupportedAdapterError, "layer_replication=.*cannot be imported exactly"),
    ("unknown-option", {}, lambda d: _patch(d, some_new_variant={"on": True}),
     UnsupportedAdapterError, "some_new_variant=.* is not known to this importer"),
    ("no-classifier", {}, lambda d: _drop_weights(d, "classifier"), UnsupportedAdapterError,
     r"holds no classifier weights.*modules_to_save=\['classifier'\]"),
    ("unknown-problem-type", {}, lambda d: (d / "config.json").write_text(
        '{"problem_type": "ranking"}'), InvalidAdapterError,
     "problem_type 'ranking' is none of transformers' \\['single_label_classification', "
     "'multi_label_classification', 'regression'\\]"),
    ("one-label-single-label", {"num_labels": 1}, lambda d: (d / "config.json").write_text(
        '{"problem_type": "single_label_classification"}'), UnsupportedAdapterError,
     r"a classification adapter needs >= 2 labels, got 1 \(a classifier with one output is "
     r"regression: problem_type 'regression'\)"),
    ("regression-of-three", {}, lambda d: (d / "config.json").write_text(
        '{"problem_type": "regression"}'), UnsupportedAdapterError,
     "a regression classifier with 3 outputs cannot be imported"),
    ("labels-do-not-fit", {}, lambda d: (d / "config.json").write_text(
        '{"id2label": {"0": "a", "1": "b"}}'), InvalidAdapterError,
     r"are not 3 distinct names with ids 0..2"),
    ("lora-weights-missing", {"target_modules": ["query"]},
     lambda d: _drop_weights(d, "layer.1.attention.self.query.lora_B"), InvalidAdapterError,
     r"lack lora_A or lora_B"),
    ("module-weights-missing", {"target_modules": ["query"]},
     lambda d: _drop_weights(d, "layer.0.attention.self.query"), InvalidAdapterError,
     r"lacks the LoRA weights of \['bert.encoder.layer.0.attention.self.query'\]"),
    ("weights-not-targeted", {"target_modules": ["query", "value"]},
     lambda d: _patch(d, target_modules=["query"]), UnsupportedAdapterError,
     r"LoRA weights for \['bert.encoder.layer.0.attention.self.value'.*cannot be placed"),
    ("rank-differs-from-config", {"r": 4, "target_modules": ["query"]}, lambda d: _patch(d, r=8),
     InvalidAdapterError, r"has rank 4 \(lora_A \(4, 32\), lora_B \(32, 4\)\); .* gives it r=8"),
    ("r-not-a-number", {}, lambda d: _patch(d, r="8"), InvalidAdapterError,
     "r is '8', not of PEFT's type"),
    ("pattern-not-a-number", {}, lambda d: _patch(d, rank_pattern={"query": "x"}),
     InvalidAdapterError, "rank_pattern is {'query': 'x'}, not of PEFT's type"),
    ("rank-zero", {}, lambda d: _patch(d, r=0), InvalidAdapterError, "r is 0; a LoRA rank is at"),
    ("bad-regex", {}, lambda d: _patch(d, target_modules="(query"), InvalidAdapterError,
     "not a valid regex"),
    ("no-weights", {}, lambda d: (d / "adapter_model.safetensors").unlink(), InvalidAdapterError,
     "no weights file: expected adapter_model.safetensors or adapter_model.bin"),
    ("claimed-other-base", {}, lambda d: (d / "config.json").write_text(
        '{"num_hidden_layers": 12}'), IncompatibleAdapterError,
     r"trained on .* with hidden size 32 and 12 layers; the service runs .* 2 layers"),
]


@pytest.mark.parametrize(("options", "setup", "error", "message"),
                         [c[1:] for c in IMPORT_REFUSALS], ids=[c[0] for c in IMPORT_REFUSALS])
def test_import_refuses_what_it_cannot_compute_exactly(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path, options: dict[str, Any],
        setup: Setup | None, error: type[Exception], message: str) -> None:
    directory = _save(_peft(tiny_model_dir, **options), tmp_path)
    if setup is not None:
        setup(directory)
    with pytest.raises(error, match=message) as caught:
        convert(directory, _base(encoder))
    assert caught.type is error


@pytest.mark.parametrize(("info", "pooler", "error", "message"), [
    ({"hidden_size": 64}, True, IncompatibleAdapterError,
     r"trained on .* with hidden size 32 and 2 layers; the service runs .* hidden size 64"),
    ({"num_layers": 1}, True, IncompatibleAdapterError,
     r"hidden size 32 and 2 layers; the service runs .* with hidden size 32 and 1 layers"),
    ({"intermediate_size": 40}, True, IncompatibleAdapterError,
     r"LoRA of bert.encoder.layer.0.intermediate.dense maps 32 to 37 features; on the served"),
    ({"model_type": "distilbert"}, True, UnsupportedAdapterError,
     "imported onto BERT bases .* a 'distilbert' model"),
    ({}, False, UnsupportedAdapterError,
     r"has no pooler weights; serve a checkpoint with its pooler, or save the pooler"),
], ids=["hidden-size", "layers", "intermediate-size", "not-bert", "no-pooler"])
def test_import_refuses_a_base_the_adapter_does_not_fit(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path, info: dict[str, Any],
        pooler: bool, error: type[Exception], message: str) -> None:
    peft_model = _peft(tiny_model_dir, target_modules=["query", "intermediate.dense"])
    base = _base(encoder, **info)
    if not pooler:
        base = dataclasses.replace(base, pooler=None)
    with pytest.raises(error, match=message):
        convert(_save(peft_model, tmp_path), base)


@pytest.mark.parametrize("task", ["SEQ_CLS", "TOKEN_CLS"])
def test_module_names_are_those_peft_matches_targets_against(tiny_model_dir: Path,
                                                             task: str) -> None:
    model = MODELS[task].from_pretrained(tiny_model_dir, num_labels=2)
    assert module_names(task, 2) == [name for name, _ in model.named_modules()]


def test_the_interop_seam_detects_and_reaches_this_converter(
        encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = _save(_peft(tiny_model_dir, r=2, target_modules=["value"]), tmp_path / "peft")
    assert interop.detect(directory) == "peft"
    conv = interop.convert(directory, _base(encoder))
    meta = new_metadata("seam", conv.head, conv.adapter, encoder.info)
    files = interop.export("peft", meta, conv.tensors, _base(encoder))
    assert json.loads(files["adapter_config.json"])["peft_type"] == "LORA"


def test_a_peft_directory_uploaded_and_downloaded_through_the_api(
        client: TestClient, encoder: FrozenEncoder, tiny_model_dir: Path, tmp_path: Path) -> None:
    peft_model = _peft(tiny_model_dir, num_labels=2, r=4, target_modules=["query", "dense"])
    directory = _save(peft_model, tmp_path / "peft", {"id2label": {"0": "neg", "1": "pos"}})
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as z:
        for path in directory.iterdir():
            z.write(path, f"sst/{path.name}")
    stored = client.put("/adapters/sst", content=upload.getvalue(),
                        headers={"content-type": "application/zip"})
    assert stored.status_code == 201, stored.text
    texts = TEXTS[:3]
    served = client.post("/predict/sst", json={"inputs": texts}).json()["predictions"]
    batch = encoder.tokenizer.collate(encoder.tokenizer.encode(texts))  # the served tokenizer
    expected = _answers(peft_model, batch, "classification")
    assert_close(torch.tensor([[p["scores"]["neg"], p["scores"]["pos"]] for p in served]),
                 expected, atol=ATOL, rtol=0)

    download = client.get("/adapters/sst/download", params={"format": "peft"})
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as z:
        z.extractall(tmp_path / "download")
    [exported] = {p.parent for p in (tmp_path / "download").rglob("adapter_config.json")}
    reloaded = _load_exported(tiny_model_dir, exported, "SEQ_CLS")
    assert_close(_answers(reloaded, batch, "classification"), expected, atol=ATOL, rtol=0)

"""AdapterHub interop: adapters and heads built and saved by the `adapters` library itself answer
the same numbers here (one at a time and mixed in the bank), exports load back into the library
with the same numbers, and every option that cannot be computed exactly is refused by name."""

from __future__ import annotations

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
from torch import Tensor
from torch.testing import assert_close

from app.adapters import interop
from app.adapters.format import join, new_metadata, split
from app.adapters.interop import BaseContext, Converted
from app.adapters.interop import adapterhub as hub
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import AdapterConfig, AdapterSet
from app.model.bank import AdapterBank
from app.model.encoder import FrozenEncoder
from app.model.tokenization import EncodedBatch
from app.tasks import HeadConfig, build_head
from tests.conftest import random_adapter

adapters = pytest.importorskip("adapters")
from adapters import (  # noqa: E402 (only where the library is installed)
    BertAdapterModel,
    BnConfig,
    CompacterConfig,
    DoubleSeqBnConfig,
    LoRAConfig,
    MAMConfig,
    ParBnConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    SeqBnInvConfig,
)
from adapters.heads import ClassificationHead, MultiLabelClassificationHead  # noqa: E402

NAME = "task"
TEXTS = ["the film was good", "john visited paris today and it was fun", "bad", "not very fun"]
PAIRS = [None, "mary works at acme corp", None, "it was slow"]
LABELS = {0: "neg", 1: "neutral", 2: "pos"}
TAGS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
AddHead = Callable[[Any], None]


def classification(multilabel: bool = False, **kwargs: Any) -> AddHead:
    kind = MultiLabelClassificationHead if multilabel else ClassificationHead

    def add(model: Any) -> None:
        model.add_prediction_head(kind(model, NAME, **{"num_labels": 3, "id2label": LABELS, **kwargs}))
    return add


def tagging(**kwargs: Any) -> AddHead:
    return lambda model: model.add_tagging_head(NAME, **{"num_labels": 5, "id2label": TAGS, **kwargs})


def qa(model: Any) -> None:
    model.add_qa_head(NAME)


def _batch(encoder: FrozenEncoder) -> EncodedBatch:
    return encoder.tokenizer.collate(encoder.tokenizer.encode(TEXTS, PAIRS))


def _base(encoder: FrozenEncoder, **info: Any) -> BaseContext:
    return BaseContext(dataclasses.replace(encoder.info, **info),
                       encoder.model.config.vocab_size, encoder.pooler)


def library_model(model_dir: Path, config: Any, add_head: AddHead, seed: int = 0) -> Any:
    """The library's model with one adapter and head, every weight of both random."""
    torch.manual_seed(seed)
    model = BertAdapterModel.from_pretrained(model_dir)
    model.add_adapter(NAME, config=config)
    add_head(model)
    model.set_active_adapters(NAME)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".adapters.{NAME}." in name or name.startswith("heads."):
                # layer norms and scaling around 1, everything else around 0
                mean = 1.0 if name.endswith("scaling") or "norm" in name and name.endswith("weight") else 0.0
                p.normal_(mean, 0.3)
    return model.eval()


@torch.no_grad()
def library_outputs(model: Any, batch: EncodedBatch) -> Tensor:
    """What the head serves: probabilities (classes, tags), values, or start/end logits."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                token_type_ids=batch.token_type_ids)
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], -1)
    logits: Tensor = out.logits
    if model.heads[model.active_head].config["head_type"] == "multilabel_classification":
        return logits.sigmoid()
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits.softmax(-1)


@torch.no_grad()
def our_outputs(encoder: FrozenEncoder, conv: Converted, batch: EncodedBatch) -> Tensor:
    adapter_tensors, head_tensors = split(conv.tensors)
    adapter = AdapterSet(conv.adapter, encoder.info.dims)
    adapter.load_state_dict(adapter_tensors)
    head = build_head(conv.head, encoder.info.hidden_size)
    head.load_state_dict(head_tensors)
    hidden = encoder.forward(batch, adapter.eval())
    return head.eval().predict(hidden, batch.attention_mask)


def assert_same(ours: Tensor, theirs: Tensor, batch: EncodedBatch) -> None:
    if ours.dim() == 3:  # per token: real tokens only (padding is masked or ignored)
        real = batch.attention_mask.bool()
        ours, theirs = ours[real], theirs[real]
    assert_close(ours, theirs, rtol=0, atol=1e-4)


def save(model: Any, directory: Path, safetensors: bool = False) -> Path:
    model.save_adapter(str(directory), NAME, with_head=True, use_safetensors=safetensors)
    return directory


ADAPTERS = {
    "seq_bn": SeqBnConfig(),
    "double_seq_bn": DoubleSeqBnConfig(),
    "reduction_factor_4": SeqBnConfig(reduction_factor=4),
    "reduction_factor_3": DoubleSeqBnConfig(reduction_factor=3),  # 32 // 3 = 10
    "reduction_factor_0.5": SeqBnConfig(reduction_factor=0.5),  # wider than the hidden size
    "reduction_factor_one_per_layer": SeqBnConfig(reduction_factor={"0": 8, "default": 8}),
    **{f"non_linearity_{a}": SeqBnConfig(non_linearity=a) for a in (
        "relu", "gelu", "gelu_new", "swish", "silu", "tanh", "sigmoid", "leakyrelu", "leaky_relu",
        "gelu_pytorch_tanh", "gelu_fast", "GELU")},
    "original_ln_before_false": SeqBnConfig(original_ln_before=False),
    "original_ln_after_false": SeqBnConfig(original_ln_after=False),
    "residual_before_ln_false": SeqBnConfig(residual_before_ln=False),
    "residual_before_ln_post_add": SeqBnConfig(residual_before_ln="post_add"),
    "houlsby_residual_before_ln_false": DoubleSeqBnConfig(residual_before_ln=False),
    "adapter_residual_before_ln": SeqBnConfig(ln_after=True, adapter_residual_before_ln=True),
    "ln_before": SeqBnConfig(ln_before=True),
    "ln_after": DoubleSeqBnConfig(ln_after=True),
    "scaling_float": SeqBnConfig(scaling=0.5),
    "scaling_learned": SeqBnConfig(scaling="learned"),
    "scaling_channel": DoubleSeqBnConfig(scaling="channel"),
    "leave_out_0": SeqBnConfig(leave_out=[0]),
    "leave_out_1_houlsby_norms": DoubleSeqBnConfig(leave_out=[1], ln_before=True, ln_after=True),
    "leave_out_adapter_plus": BnConfig(  # AdapterPlus without stochastic depth (needs torchvision)
        mh_adapter=False, output_adapter=True, reduction_factor=4, non_linearity="gelu",
        original_ln_before=True, original_ln_after=False, residual_before_ln=False,
        scaling="channel", leave_out=[1]),
    "training_only_options": SeqBnConfig(dropout=0.3, init_weights="houlsby", init_weights_seed=3),
    "everything": DoubleSeqBnConfig(
        reduction_factor=5, non_linearity="gelu_new", original_ln_before=True,
        residual_before_ln="post_add", ln_before=True, ln_after=True,
        adapter_residual_before_ln=True, scaling="channel"),
}


@pytest.mark.parametrize("case", list(ADAPTERS))
def test_adapter_options_match_the_library(tiny_model_dir: Path, encoder: FrozenEncoder,
                                           tmp_path: Path, case: str) -> None:
    model = library_model(tiny_model_dir, ADAPTERS[case], classification())
    batch = _batch(encoder)
    conv = hub.convert(save(model, tmp_path), _base(encoder))
    expected = library_outputs(model, batch)
    assert_same(our_outputs(encoder, conv, batch), expected, batch)
    model.set_active_adapters(None)  # the adapter matters: without it the numbers differ
    assert not torch.allclose(library_outputs(model, batch), expected, atol=1e-3)
    # left-out layers count: the base is described as the library saw it
    assert (conv.base.hidden_size, conv.base.num_layers, conv.base.model_type) == (32, 2, "bert")


HEADS: dict[str, AddHead] = {
    "classification": classification(),
    "classification_1_layer": classification(layers=1),
    "classification_relu": classification(activation_function="relu"),
    "classification_gelu": classification(activation_function="gelu"),
    "classification_no_activation": classification(activation_function=None),  # folded
    "classification_linear_activation": classification(activation_function="linear"),
    "classification_use_pooler": classification(use_pooler=True),
    "classification_use_pooler_1_layer": classification(use_pooler=True, layers=1),
    "classification_bias_false": classification(bias=False),
    "classification_without_labels": classification(id2label=None, num_labels=2),
    "regression": classification(num_labels=1, id2label=None),
    "multilabel": classification(multilabel=True),
    "multilabel_use_pooler_bias_false": classification(multilabel=True, use_pooler=True, bias=False),
    "multilabel_one_label": classification(multilabel=True, num_labels=1, id2label={0: "spam"}),
    "tagging": tagging(),
    "tagging_2_layers": tagging(layers=2, activation_function="gelu"),
    "question_answering": qa,
}


@pytest.mark.parametrize("case", list(HEADS))
def test_heads_match_the_library(tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path,
                                 case: str) -> None:
    model = library_model(tiny_model_dir, SeqBnConfig(), HEADS[case], seed=1)
    batch = _batch(encoder)
    conv = hub.convert(save(model, tmp_path, safetensors=True), _base(encoder))
    assert_same(our_outputs(encoder, conv, batch), library_outputs(model, batch), batch)


def test_labels_task_types_and_source_are_recorded(tiny_model_dir: Path, encoder: FrozenEncoder,
                                                   tmp_path: Path) -> None:
    expected = {
        "classification": ("classification", ["neg", "neutral", "pos"], "cls"),
        "classification_without_labels": ("classification", ["LABEL_0", "LABEL_1"], "cls"),
        "regression": ("regression", [], "cls"),
        "multilabel": ("multi_label_classification", ["neg", "neutral", "pos"], "cls"),
        "multilabel_one_label": ("multi_label_classification", ["spam"], "cls"),
        "tagging": ("token_classification", list(TAGS.values()), None),
        "question_answering": ("question_answering", [], None),
    }
    for case, (task_type, labels, pooling) in expected.items():
        model = library_model(tiny_model_dir, SeqBnConfig(), HEADS[case])
        conv = interop.convert(save(model, tmp_path / case), _base(encoder))  # found by the seam
        assert (conv.head.task_type, conv.head.labels) == (task_type, labels)
        assert pooling is None or conv.head.pooling == pooling
    assert conv.source["library"] == "adapterhub"
    assert conv.source["name"] == NAME and conv.source["model_name"] == str(tiny_model_dir)
    assert conv.source["files"] == ["adapter_config.json", "pytorch_adapter.bin", "head_config.json",
                                    "pytorch_model_head.bin"]
    assert conv.source["config"]["non_linearity"] == "relu"
    assert conv.source["head_config"]["head_type"] == "question_answering"
    assert conv.base.num_layers == 2 and conv.base.name == str(tiny_model_dir)


@pytest.mark.parametrize("which", [[1, 0, None, 2], [2, 2, None, 0], [0, 1, 2, 1]])
@torch.no_grad()
def test_converted_adapters_mix_in_the_bank_row_by_row(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, which: list[int | None]) -> None:
    configs = [SeqBnConfig(scaling="channel", leave_out=[1]),
               DoubleSeqBnConfig(ln_after=True, adapter_residual_before_ln=True, reduction_factor=3),
               SeqBnConfig(original_ln_before=False, non_linearity="gelu")]  # the service's recipe
    models = [library_model(tiny_model_dir, c, classification(), seed=i) for i, c in enumerate(configs)]
    convs = [hub.convert(save(m, tmp_path / str(i)), _base(encoder)) for i, m in enumerate(models)]
    bank = AdapterBank(encoder.info.dims, encoder.device, encoder.dtype)
    slots = [bank.add(c.adapter, split(c.tensors)[0]) for c in convs]
    batch = _batch(encoder)
    assignment = [0 if i is None else slots[i] for i in which]  # None: a row without adapter
    hidden = encoder.forward(batch, bank.routing(assignment))
    expected = [library_outputs(m, batch) for m in models]
    for row, slot in enumerate(assignment):
        if slot == 0:
            continue
        conv = convs[slots.index(slot)]
        head = build_head(conv.head, encoder.info.hidden_size)
        head.load_state_dict(split(conv.tensors)[1])
        ours = head.eval().predict(hidden[row:row + 1], batch.attention_mask[row:row + 1])
        assert_close(ours[0], expected[slots.index(slot)][row], rtol=0, atol=1e-4)


def _write(files: dict[str, bytes], directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _load_export(model_dir: Path, directory: Path, safetensors: bool, name: str = NAME) -> Any:
    model = BertAdapterModel.from_pretrained(model_dir)
    loaded = model.load_adapter(str(directory), with_head=True, set_active=True,
                                use_safetensors=safetensors)
    assert loaded == name and name in model.heads  # the head came too
    return model.eval()


@pytest.mark.parametrize("case,safetensors", [
    ("everything", False), ("scaling_learned", True), ("leave_out_1_houlsby_norms", False),
    ("reduction_factor_3", True), ("leave_out_adapter_plus", False), ("ln_before", True)])
def test_export_of_a_converted_adapter_loads_into_the_library(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, case: str,
        safetensors: bool) -> None:
    model = library_model(tiny_model_dir, ADAPTERS[case], classification(use_pooler=True), seed=2)
    batch = _batch(encoder)
    conv = hub.convert(save(model, tmp_path / "saved"), _base(encoder))
    meta = new_metadata(NAME, conv.head, conv.adapter, encoder.info)
    files = interop.export("adapterhub", meta, conv.tensors, _base(encoder))
    assert set(files) == {"adapter_config.json", "head_config.json", "adapter.safetensors",
                          "pytorch_adapter.bin", "model_head.safetensors", "pytorch_model_head.bin"}
    loaded = _load_export(tiny_model_dir, _write(files, tmp_path / "export"), safetensors)
    assert_same(library_outputs(loaded, batch), library_outputs(model, batch), batch)


@pytest.mark.parametrize("head_case", ["tagging_2_layers", "question_answering", "regression",
                                       "classification_no_activation",
                                       "multilabel_use_pooler_bias_false"])
def test_export_of_converted_heads_loads_into_the_library(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, head_case: str) -> None:
    model = library_model(tiny_model_dir, DoubleSeqBnConfig(), HEADS[head_case], seed=3)
    batch = _batch(encoder)
    conv = hub.convert(save(model, tmp_path / "saved"), _base(encoder))
    meta = new_metadata(NAME, conv.head, conv.adapter, encoder.info)
    loaded = _load_export(tiny_model_dir, _write(hub.export(meta, conv.tensors, _base(encoder)),
                                                 tmp_path / "export"), False)
    assert_same(library_outputs(loaded, batch), library_outputs(model, batch), batch)


NATIVE = [
    (AdapterConfig(bottleneck_size=5, activation="gelu"),
     HeadConfig(task_type="classification", labels=["a", "b", "c"], pooling="cls")),
    (AdapterConfig(placement="houlsby", original_ln_before=True, residual_before_ln="post_add",
                   ln_before=True, ln_after=True, scaling=0.7, activation="silu"),
     HeadConfig(task_type="classification", labels=["a", "b"], use_pooler=True, layers=1)),
    (AdapterConfig(reduction_factor=4, activation="leakyrelu"),
     HeadConfig(task_type="regression", pooling="cls", activation="relu")),
    (AdapterConfig(placement="houlsby", activation="sigmoid"),
     HeadConfig(task_type="token_classification", labels=list(TAGS.values()), layers=2)),
    (AdapterConfig(original_ln_before=True, original_ln_after=False, residual_before_ln=False),
     HeadConfig(task_type="multi_label_classification", labels=["x", "y", "z"], pooling="cls")),
]


@pytest.mark.parametrize("index", range(len(NATIVE)))
@torch.no_grad()
def test_export_of_a_native_adapter_loads_into_the_library(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, index: int) -> None:
    config, head_config = NATIVE[index]
    adapter, head, _ = random_adapter(encoder, config, head_config, seed=index)
    if head_config.use_pooler:  # the base's pooler, as it stays when training
        assert encoder.pooler is not None
        head.load_state_dict({**head.state_dict(), **{f"pooler.{k}": v for k, v in encoder.pooler.items()}})
    meta = new_metadata(NAME, head_config, config, encoder.info)
    files = hub.export(meta, join(adapter.state_dict(), head.state_dict()), _base(encoder))
    loaded = _load_export(tiny_model_dir, _write(files, tmp_path / "export"), index % 2 == 0)
    batch = _batch(encoder)
    ours = head.predict(encoder.forward(batch, adapter), batch.attention_mask)
    assert_same(ours, library_outputs(loaded, batch), batch)


REFUSED_ADAPTERS = {
    "use_gating": (SeqBnConfig(use_gating=True), "use_gating"),
    "phm_layer": (CompacterConfig(reduction_factor=4), "phm_layer"),
    "is_parallel": (ParBnConfig(), "is_parallel"),
    "inv_adapter": (SeqBnInvConfig(), "inv_adapter"),
    "mh_adapter_only": (BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=8,
                                 non_linearity="relu"), "output_adapter=false"),
    "prefix_tuning": (PrefixTuningConfig(prefix_length=4), "architecture 'prefix_tuning'"),
    "lora": (LoRAConfig(), "architecture 'lora'.*format=peft"),
    "union": (MAMConfig(), "architecture 'union'"),
    "reduction_factor_per_layer": (SeqBnConfig(reduction_factor={"0": 4, "default": 8}),
                                   r"reduction_factor .* sizes \[4, 8\]"),
    "non_linearity_mish": (SeqBnConfig(non_linearity="mish"), "non_linearity 'mish'"),
    "non_linearity_linear": (SeqBnConfig(non_linearity="linear"), "non_linearity 'linear'"),
    "leave_out_residual_after_ln": (SeqBnConfig(residual_before_ln=False, leave_out=[0]), "leave_out"),
    "leave_out_ln_after_residual_first": (
        SeqBnConfig(ln_after=True, adapter_residual_before_ln=True, leave_out=[1]), "leave_out"),
}


@pytest.mark.parametrize("case", list(REFUSED_ADAPTERS))
def test_adapters_that_cannot_be_computed_exactly_are_refused(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, case: str) -> None:
    config, message = REFUSED_ADAPTERS[case]
    model = library_model(tiny_model_dir, config, classification())
    with pytest.raises(UnsupportedAdapterError, match=message):
        hub.convert(save(model, tmp_path), _base(encoder))


REFUSED_HEADS: dict[str, tuple[AddHead, str]] = {
    "multiple_choice": (lambda m: m.add_multiple_choice_head(NAME), "head_type 'multiple_choice'"),
    "three_layers": (classification(layers=3), "layers=3"),
    "activation_mish": (classification(activation_function="mish"), "activation_function 'mish'"),
    "qa_two_layers": (lambda m: m.add_qa_head(NAME, layers=2), "question_answering head with layers=2"),
}


@pytest.mark.parametrize("case", list(REFUSED_HEADS))
def test_heads_that_cannot_be_computed_exactly_are_refused(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, case: str) -> None:
    add_head, message = REFUSED_HEADS[case]
    model = library_model(tiny_model_dir, SeqBnConfig(), add_head)
    with pytest.raises(UnsupportedAdapterError, match=message):
        hub.convert(save(model, tmp_path), _base(encoder))


@pytest.fixture
def saved(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return save(library_model(tiny_model_dir, SeqBnConfig(), classification(use_pooler=True)),
                tmp_path / "saved")


def _edit(path: Path, **config: Any) -> None:
    data = json.loads(path.read_text())
    data["config"].update(config)
    path.write_text(json.dumps(data))


def test_use_pooler_without_a_base_pooler_is_refused(encoder: FrozenEncoder, saved: Path) -> None:
    base = BaseContext(encoder.info, encoder.model.config.vocab_size, None)
    with pytest.raises(UnsupportedAdapterError, match="use_pooler=true .* has none"):
        hub.convert(saved, base)


def test_unknown_options_are_refused(encoder: FrozenEncoder, saved: Path) -> None:
    _edit(saved / "adapter_config.json", new_gate=0.5)
    with pytest.raises(UnsupportedAdapterError, match=r"options \['new_gate'\] are unknown"):
        hub.convert(saved, _base(encoder))


def test_a_config_without_version_reads_gelu_as_adapter_transformers_did(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path) -> None:
    model = library_model(tiny_model_dir, SeqBnConfig(non_linearity="gelu_new"), classification())
    directory = save(model, tmp_path)
    data = json.loads((directory / "adapter_config.json").read_text())
    data["config"]["non_linearity"] = "gelu"  # adapter-transformers' name for gelu_new
    del data["version"]
    (directory / "adapter_config.json").write_text(json.dumps(data))
    assert hub.convert(directory, _base(encoder)).adapter.activation == "gelu_new"


def test_weights_under_adapter_transformers_names_are_read(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path) -> None:
    model = library_model(tiny_model_dir, DoubleSeqBnConfig(), classification())
    directory = save(model, tmp_path)
    state = torch.load(directory / "pytorch_adapter.bin", weights_only=True)
    legacy = {k.replace("attention.output.adapters", "attention.output.attention_text_task_adapters")
              .replace("output.adapters", "output.layer_text_task_adapters"): v for k, v in state.items()}
    assert legacy.keys() != state.keys()
    torch.save(legacy, directory / "pytorch_adapter.bin")
    batch = _batch(encoder)
    conv = hub.convert(directory, _base(encoder))
    assert_same(our_outputs(encoder, conv, batch), library_outputs(model, batch), batch)


@pytest.mark.parametrize("saved_with,read_with,message", [
    ({"ln_after": True}, {"ln_after": False}, r"\['adapter_norm_after.bias', .*\] do not fit"),
    ({"scaling": "channel"}, {"scaling": 1.0}, r"\['scaling'\] do not fit"),
    ({}, {"ln_after": True}, r"adapter_norm_after.weight of shape \(32,\) expected, found nothing"),
])
def test_weights_that_do_not_fit_the_config_are_refused(
        tiny_model_dir: Path, encoder: FrozenEncoder, tmp_path: Path, saved_with: dict[str, Any],
        read_with: dict[str, Any], message: str) -> None:
    directory = save(library_model(tiny_model_dir, SeqBnConfig(**saved_with), classification()), tmp_path)
    _edit(directory / "adapter_config.json", **read_with)
    with pytest.raises(InvalidAdapterError, match=message):
        hub.convert(directory, _base(encoder))


def test_a_directory_without_head_is_refused(tiny_model_dir: Path, encoder: FrozenEncoder,
                                             tmp_path: Path) -> None:
    model = library_model(tiny_model_dir, SeqBnConfig(), classification())
    model.save_adapter(str(tmp_path), NAME, with_head=False)
    with pytest.raises(InvalidAdapterError, match="with_head=True"):
        hub.convert(tmp_path, _base(encoder))


@pytest.mark.parametrize("info,found", [
    ({"num_layers": 3}, "3 layers"), ({"hidden_size": 64}, "hidden size 64")])
def test_a_base_of_another_shape_is_incompatible_with_both_described(
        encoder: FrozenEncoder, saved: Path, info: dict[str, int], found: str) -> None:
    with pytest.raises(IncompatibleAdapterError, match="hidden size 32 and 2 layers") as exc:
        hub.convert(saved, _base(encoder, **info))
    assert found in str(exc.value)


def test_export_refuses_what_adapterhub_cannot_express(encoder: FrozenEncoder) -> None:
    cases = [
        (AdapterConfig(method="lora"), HeadConfig(task_type="classification", labels=["a", "b"],
                                                  pooling="cls"), "format=peft"),
        (AdapterConfig(), HeadConfig(task_type="classification", labels=["a", "b"]),
         "pooling='mean'"),
        (AdapterConfig(), HeadConfig(task_type="regression"), "pooling='mean'"),
        (AdapterConfig(), HeadConfig(task_type="multi_label_classification", labels=["a"]),
         "pooling='mean'"),
        (AdapterConfig(), HeadConfig(task_type="classification", labels=["a", "b"], use_pooler=True),
         "its own pooler"),
    ]
    for config, head_config, message in cases:
        adapter, head, _ = random_adapter(encoder, config, head_config)
        meta = new_metadata(NAME, head_config, config, encoder.info)
        with pytest.raises(UnsupportedAdapterError, match=message):
            hub.export(meta, join(adapter.state_dict(), head.state_dict()), _base(encoder))


@pytest.mark.parametrize("bottleneck", [1, 3, 5, 7, 10, 11, 16, 31, 32, 33, 100])
def test_exported_reduction_factor_gives_the_bottleneck_back(bottleneck: int) -> None:
    for hidden in (32, 384, 768, 1024):
        assert int(hidden // hub.reduction_factor(hidden, bottleneck)) == bottleneck


def _zip(directory: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for path in directory.iterdir():
            z.write(path, f"saved/{path.name}")
    return out.getvalue()


@torch.no_grad()
def test_imported_over_http_it_predicts_as_the_library_and_downloads_back(
        tiny_model_dir: Path, encoder: FrozenEncoder, client: TestClient, tmp_path: Path) -> None:
    model = library_model(tiny_model_dir, DoubleSeqBnConfig(scaling="learned", ln_after=True),
                          classification(use_pooler=True), seed=4)
    put = client.put("/adapters/hub", content=_zip(save(model, tmp_path / "saved")),
                     headers={"content-type": "application/zip"})
    assert put.status_code == 201, put.text
    inputs = [{"text": t, **({"text_pair": p} if p else {})} for t, p in zip(TEXTS, PAIRS, strict=True)]
    predictions = client.post("/predict/hub", json={"inputs": inputs}).json()["predictions"]
    served = torch.tensor([[p["scores"][label] for label in LABELS.values()] for p in predictions])
    batch = _batch(encoder)
    expected = library_outputs(model, batch)
    assert_close(served, expected, rtol=0, atol=1e-4)
    download = client.get("/adapters/hub/download", params={"format": "adapterhub"})
    assert download.status_code == 200, download.text
    with zipfile.ZipFile(io.BytesIO(download.content)) as z:
        z.extractall(tmp_path / "download")
    [directory] = {p.parent for p in (tmp_path / "download").rglob("adapter_config.json")}
    loaded = _load_export(tiny_model_dir, directory, safetensors=True, name="hub")
    assert_close(library_outputs(loaded, batch), expected, rtol=0, atol=1e-4)

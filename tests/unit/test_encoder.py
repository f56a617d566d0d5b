"""Injection into encoder families, clear refusal of the rest, and the base fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    RobertaConfig,
    RobertaModel,
)

from app.errors import UnsupportedModelError
from app.model.adapter import LORA_SITES, AdapterConfig, AdapterSet, Dims
from app.model.encoder import FrozenEncoder, fingerprint
from app.model.injection import RoutingHook, inject

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 37, "vocab_size": 99}


@pytest.mark.parametrize("model", [
    lambda: RobertaModel(RobertaConfig(**SMALL), add_pooling_layer=False),
    lambda: DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                             vocab_size=99)),
], ids=["roberta", "distilbert"])
def test_other_encoder_families_take_adapters(model) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = model().eval()
    ids = torch.randint(5, 99, (2, 7))
    bare = m(input_ids=ids).last_hidden_state
    hook = RoutingHook()
    layout = inject(m, m.config.model_type, hook)
    assert layout.blocks == (m.config.model_type == "roberta")  # BERT-style output blocks
    lora = AdapterConfig(method="lora", target_modules=list(LORA_SITES))
    for config in (AdapterConfig(placement="houlsby"), lora):
        adapter = AdapterSet(config, Dims(32, 2, 37))
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.3)
        hook.set(adapter)
        adapted = m(input_ids=ids).last_hidden_state
        hook.set(None)
        torch.testing.assert_close(m(input_ids=ids).last_hidden_state, bare)
        assert not torch.allclose(adapted, bare, atol=1e-3)


def test_unsupported_encoder_fails_with_a_clear_message() -> None:
    m = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99))
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*not supported.*supported types"):
        inject(m, "gpt2", RoutingHook())


def test_missing_model_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="cannot load base model"):
        FrozenEncoder.load(str(tmp_path / "nowhere"))


def test_fingerprint_depends_on_weights() -> None:
    torch.manual_seed(0)
    a = BertModel(BertConfig(**SMALL), add_pooling_layer=False)
    b = BertModel(BertConfig(**SMALL), add_pooling_layer=False)
    b.load_state_dict(a.state_dict())
    assert fingerprint(a, "bert") == fingerprint(b, "bert")
    with torch.no_grad():
        b.embeddings.word_embeddings.weight[3, 0] += 1e-3
    assert fingerprint(a, "bert") != fingerprint(b, "bert")


def test_half_precision_needs_a_gpu(tiny_model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UnsupportedModelError, match="float16 needs a CUDA device"):
        FrozenEncoder.load(str(tiny_model_dir), device="cpu", dtype="float16")


def test_bottleneck_options_need_bert_output_blocks(encoder: FrozenEncoder) -> None:
    from dataclasses import replace

    pfeiffer_hub = AdapterConfig(original_ln_before=True)
    assert encoder.info.output_blocks and encoder.info.unsupported(pfeiffer_hub) is None
    distil = replace(encoder.info, model_type="distilbert", output_blocks=False)
    assert "need a BERT-style encoder" in (distil.unsupported(pfeiffer_hub) or "")
    assert distil.unsupported(AdapterConfig()) is None
    assert distil.unsupported(AdapterConfig(method="lora")) is None
    assert "output_blocks" not in encoder.info.as_dict()  # not recorded in adapter metadata

"""Adapter math: identity init, per-row routing equals one row at a time, base never changes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from app.model.adapter import AdapterConfig, AdapterSet
from app.model.bank import AdapterBank
from app.model.encoder import FrozenEncoder
from app.model.routing import NULL_SLOT
from tests.conftest import random_adapter

TEXTS = ["the film was good", "john visited paris today and it was fun", "bad", "not very fun"]
PAIRS = [None, "mary works at acme corp", None, "it was slow"]


def _batch(encoder: FrozenEncoder):  # type: ignore[no-untyped-def]
    return encoder.tokenizer.collate(encoder.tokenizer.encode(TEXTS, PAIRS))


def _bank(encoder: FrozenEncoder) -> AdapterBank:
    return AdapterBank(encoder.info.dims, encoder.device, encoder.dtype)


@torch.inference_mode()
def test_untrained_adapter_leaves_base_output_unchanged(encoder: FrozenEncoder) -> None:
    batch = _batch(encoder)
    adapter = AdapterSet(AdapterConfig(placement="houlsby"), encoder.info.dims).eval()
    assert_close(encoder.forward(batch, adapter), encoder.forward(batch), rtol=0, atol=0)


CONFIGS = [
    AdapterConfig(),
    AdapterConfig(placement="houlsby", bottleneck_size=5, activation="gelu"),
    AdapterConfig(bottleneck_size=3, activation="tanh"),
    AdapterConfig(reduction_factor=2, activation="silu"),
]


@pytest.mark.parametrize("assignment", [[1, 2, 3, 4], [2, 0, 2, 4], [3, 3, 1, 0]])
@torch.inference_mode()
def test_mixed_batch_equals_each_row_alone(encoder: FrozenEncoder, assignment: list[int]) -> None:
    batch = _batch(encoder)
    adapters = [random_adapter(encoder, c, seed=i)[0] for i, c in enumerate(CONFIGS)]
    bank = _bank(encoder)
    slots = [bank.add(c, a.state_dict()) for c, a in zip(CONFIGS, adapters, strict=True)]
    assert slots == [1, 2, 3, 4]
    _assert_each_row_as_alone(encoder, batch, bank, adapters, assignment)


def _assert_each_row_as_alone(encoder: FrozenEncoder, batch, bank: AdapterBank,  # type: ignore[no-untyped-def]
                               adapters: list[AdapterSet], assignment: list[int]) -> None:
    """Row i of the mixed batch (slot assignment[i]) equals that row alone through its adapter
    (or the bare base), and every adapter really changes its row's output."""
    mixed = encoder.forward(batch, bank.routing(assignment))
    bare = encoder.forward(batch)
    for row, slot in enumerate(assignment):
        one = _row(batch, row)
        alone = (encoder.forward(one) if slot == NULL_SLOT
                 else encoder.forward(one, adapters[slot - 1]))
        n = int(batch.attention_mask[row].sum())
        assert_close(mixed[row, :n], alone[0, :n], rtol=1e-4, atol=1e-5)
        if slot != NULL_SLOT:
            assert not torch.allclose(mixed[row], bare[row], atol=1e-3)


def _row(batch, row: int):  # type: ignore[no-untyped-def]
    """Row `row` alone, unpadded."""
    n = int(batch.attention_mask[row].sum())
    return type(batch)(batch.input_ids[row:row + 1, :n], batch.attention_mask[row:row + 1, :n],
                       None if batch.token_type_ids is None else batch.token_type_ids[row:row + 1, :n])


@torch.inference_mode()
def test_removed_slot_is_reused_and_holds_only_the_new_adapter(encoder: FrozenEncoder) -> None:
    batch = _batch(encoder)
    bank = _bank(encoder)
    big = random_adapter(encoder, CONFIGS[1], seed=1)[0]  # houlsby: weights at both positions
    small = random_adapter(encoder, CONFIGS[0], seed=2)[0]
    slot = bank.add(CONFIGS[1], big.state_dict())
    bank.remove(slot)
    assert bank.add(CONFIGS[0], small.state_dict()) == slot
    assert_close(encoder.forward(batch, bank.routing([slot] * 4)), encoder.forward(batch, small))


def test_training_step_changes_only_adapter_and_head(encoder: FrozenEncoder) -> None:
    before = {n: p.clone() for n, p in encoder.base_parameters().items()}
    adapter, head, _ = random_adapter(encoder, CONFIGS[1])
    adapter.train()
    head.train()
    params = [*adapter.parameters(), *head.parameters()]
    adapter_before = [p.clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    batch = _batch(encoder)
    hidden = encoder.forward(batch, adapter)
    loss = head.loss(head(hidden, batch.attention_mask), torch.tensor([0, 1, 1, 0]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in encoder.base_parameters().values())
    for name, p in encoder.base_parameters().items():
        assert torch.equal(p, before[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(params, adapter_before, strict=True))


def test_wrapped_layers_keep_a_reference_to_the_base_layer(encoder: FrozenEncoder) -> None:
    from app.model.adapter import LORA_SITES
    from app.model.injection import AdaptedBlock, AdaptedLinear

    wrapped = [m for m in encoder.model.modules() if isinstance(m, AdaptedLinear)]
    assert len(wrapped) == len(LORA_SITES) * encoder.info.num_layers  # every LoRA site
    assert all(isinstance(m.base_layer, torch.nn.Linear) for m in wrapped)
    blocks = [m for m in encoder.model.modules() if isinstance(m, AdaptedBlock)]
    assert len(blocks) == 2 * encoder.info.num_layers  # both output blocks of every layer
    assert all(not p.requires_grad for p in encoder.model.parameters())


# Every kind of row one forward pass may mix: the service's own bottlenecks, AdapterHub's
# bottleneck recipes (Pfeiffer: input after the block's layer norm; Houlsby; own layer norms,
# scaling, post_add residual) and LoRA updates of different ranks on different projections.
KINDS = [
    AdapterConfig(bottleneck_size=4),
    AdapterConfig(original_ln_before=True, reduction_factor=16, scaling=0.5),
    AdapterConfig(placement="houlsby", activation="silu", ln_before=True, ln_after=True,
                  adapter_residual_before_ln=True),
    AdapterConfig(original_ln_before=True, residual_before_ln="post_add", ln_after=True,
                  original_ln_after=False, activation="gelu_new"),
    AdapterConfig(original_ln_before=True, residual_before_ln=False, bottleneck_size=6),
    AdapterConfig(method="lora", r=2, alpha=4, target_modules=["query", "value"]),
    AdapterConfig(method="lora", r=5, alpha=3, use_rslora=True,
                  target_modules=["key", "attn_output", "intermediate", "output"]),
]


@pytest.mark.parametrize("assignment", [
    [1, 2, 3, 4], [5, 6, 7, 0], [6, 1, 7, 3], [7, 7, 2, 2], [6, 6, 6, 6], [0, 5, 0, 1],
])
@torch.inference_mode()
def test_bottleneck_recipes_and_lora_rows_mix_in_one_pass(encoder: FrozenEncoder,
                                                          assignment: list[int]) -> None:
    batch = _batch(encoder)
    adapters = [random_adapter(encoder, c, seed=10 + i)[0] for i, c in enumerate(KINDS)]
    bank = _bank(encoder)
    slots = [bank.add(c, a.state_dict()) for c, a in zip(KINDS, adapters, strict=True)]
    assert slots == list(range(1, len(KINDS) + 1))
    _assert_each_row_as_alone(encoder, batch, bank, adapters, assignment)


@torch.inference_mode()
def test_a_lora_slot_reused_by_a_bottleneck_holds_only_the_bottleneck(encoder: FrozenEncoder
                                                                      ) -> None:
    batch = _batch(encoder)
    bank = _bank(encoder)
    lora = random_adapter(encoder, KINDS[6], seed=1)[0]
    bottleneck = random_adapter(encoder, KINDS[2], seed=2)[0]
    slot = bank.add(KINDS[6], lora.state_dict())
    bank.remove(slot)
    assert bank.add(KINDS[2], bottleneck.state_dict()) == slot
    assert_close(encoder.forward(batch, bank.routing([slot] * 4)),
                 encoder.forward(batch, bottleneck))


def test_untrained_lora_leaves_base_output_unchanged(encoder: FrozenEncoder) -> None:
    batch = _batch(encoder)
    with torch.inference_mode():
        adapter = AdapterSet(KINDS[6], encoder.info.dims).eval()
        assert_close(encoder.forward(batch, adapter), encoder.forward(batch), rtol=0, atol=0)


def test_bank_bytes_count_every_kind(encoder: FrozenEncoder) -> None:
    bank = _bank(encoder)
    h, i = encoder.info.hidden_size, encoder.info.intermediate_size
    layers = encoder.info.num_layers
    assert bank.bytes_with(KINDS[5]) == layers * 2 * (2 * h * 2) * 4  # r=2 on query, value
    bank.add(KINDS[5], random_adapter(encoder, KINDS[5])[0].state_dict())
    bank.add(KINDS[0], random_adapter(encoder, KINDS[0])[0].state_dict())
    lora = layers * 2 * (2 * h * 2)
    bottleneck = layers * (2 * h * 4 + 4 + h)
    assert bank.used_bytes == 2 * (lora + bottleneck) * 4
    assert i > 0


def test_lora_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="target_modules is empty"):
        AdapterConfig(method="lora", target_modules=[])
    with pytest.raises(ValueError, match="target_modules"):
        AdapterConfig(method="lora", target_modules=["pooler"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="post_add"):
        AdapterConfig(residual_before_ln="post_add")

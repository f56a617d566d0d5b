"""Integrated gradients on the tiny BERT: as Captum computes them, complete (refined until they
are), per word, the same in a mixed batch as alone, zero where a word cannot matter, and no
parameter gradient."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from torch.testing import assert_close

from app.model.adapter import AdapterConfig
from app.model.attribution import (
    PathIntegral,
    baseline_ids,
    clenshaw_curtis,
    gauss_legendre,
    node_alpha,
    word_scores,
)
from app.model.bank import AdapterBank
from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature
from app.serving.explainer import combine
from app.serving.paths import ChunkResult, PathChunk, PathRow, explain_pass, length_groups
from app.tasks import DecodeOptions, Head, HeadConfig, get_task
from app.tasks.base import Target, TextInput
from tests.conftest import random_adapter

CLASSES = HeadConfig(task_type="classification", labels=["neg", "pos"])
HEADS = {
    "classification": CLASSES,
    "regression": HeadConfig(task_type="regression"),
    "token_classification": HeadConfig(task_type="token_classification",
                                       labels=["O", "B-X", "I-X"]),
    "question_answering": HeadConfig(task_type="question_answering"),
    "multi_label_classification": HeadConfig(task_type="multi_label_classification",
                                             labels=["a", "b", "c"]),
}


class Served:
    """Adapters in a bank with their heads, as the engine holds them."""

    def __init__(self, encoder: FrozenEncoder) -> None:
        self.encoder = encoder
        self.bank = AdapterBank(encoder.info.dims, encoder.device, encoder.dtype)
        self.heads: dict[int, Head] = {}

    def add(self, seed: int, config: AdapterConfig | None = None,
            head: HeadConfig = CLASSES) -> int:
        adapter, module, _ = random_adapter(self.encoder, config, head, seed)
        assert isinstance(module, Head)
        slot = self.bank.add(adapter.config, adapter.state_dict())
        self.heads[slot] = module.requires_grad_(False)
        return slot

    def explain(self, items: list[tuple[int, Feature, PathChunk]]) -> list[ChunkResult]:
        rows = [PathRow(f, chunk, self.heads[slot], slot) for slot, f, chunk in items]
        return explain_pass(self.encoder, rows, self.bank.routing)

    def predict(self, slot: int, feature: Feature):  # type: ignore[no-untyped-def]
        batch = self.encoder.tokenizer.collate([feature])
        with torch.inference_mode():
            hidden = self.encoder.forward(batch, self.bank.routing([slot]))
            out = self.heads[slot].predict(hidden, batch.attention_mask)
        return self.heads[slot].decode(out[0], feature, DecodeOptions())


def whole(targets: list[Target], steps: int = 16) -> PathChunk:
    """Every point of the Clenshaw-Curtis rule with `steps` steps."""
    nodes, _ = clenshaw_curtis(steps)
    return PathChunk(tuple(targets), tuple(node_alpha(k) for k in nodes))


def integral(steps: int, results: list[ChunkResult]) -> PathIntegral:
    """The path of `steps` steps from the results of its points, in order."""
    path = PathIntegral(steps)
    nodes = clenshaw_curtis(steps)[0]
    at = 0
    for r in results:
        path.add(nodes[at:at + len(r.terms)], r.terms, r.outputs)
        at += len(r.terms)
    return path


def text(encoder: FrozenEncoder, value: str, pair: str | None = None) -> Feature:
    return encoder.tokenizer.encode([value], [pair])[0]


def test_the_same_numbers_as_captums_layer_integrated_gradients(encoder: FrozenEncoder) -> None:
    served = Served(encoder)
    slot = served.add(1)
    feature = text(encoder, "the film was not very good", "it was slow")
    alphas, weights = gauss_legendre(20)  # Captum's rule; ends for the delta
    (mine, ends) = served.explain([(slot, feature, PathChunk((Target(label=1),), tuple(alphas))),
                                   (slot, feature, PathChunk((Target(label=1),), (0.0, 1.0)))])
    tokens = (torch.tensor(weights).view(-1, 1, 1) * mine.terms).sum(0)  # (K, T)
    batch = encoder.tokenizer.collate([feature])
    head = served.heads[slot]

    def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        routing = served.bank.routing([slot] * len(ids))
        hidden = encoder.forward(type(batch)(ids, mask, types), routing)
        return head.predict(hidden, mask)[:, 1]

    lig = LayerIntegratedGradients(forward, encoder.model.get_input_embeddings())
    base = torch.tensor([baseline_ids(feature, encoder.tokenizer.baseline_id)])
    theirs, delta = lig.attribute(batch.input_ids, base, additional_forward_args=(
        batch.attention_mask, batch.token_type_ids), n_steps=20, method="gausslegendre",
        return_convergence_delta=True)
    assert_close(tokens[0], theirs.sum(-1)[0], atol=1e-6, rtol=1e-4)
    base_out, output = ends.outputs[:, 0]
    assert_close(float(tokens.sum() - (output - base_out)), float(delta), atol=1e-6, rtol=1e-3)


def _explained(served: Served, task_type: str, slot: int, feature: Feature, steps: int = 16,
               tolerance: float = 0.01):  # type: ignore[no-untyped-def]
    """What the service would attach to the prediction of `feature`: refined as the explainer
    refines, up to 256 steps."""
    task = get_task(task_type)
    row = served.predict(slot, feature)
    (targets,) = task.explain_targets([feature], [row], [True], HEADS[task_type].labels, None,
                                      DecodeOptions())
    path = PathIntegral(steps)
    while True:
        nodes = path.missing()
        (part,) = served.explain([(slot, feature, PathChunk(
            tuple(targets), tuple(node_alpha(k) for k in nodes)))])
        path.add(nodes, part.terms, part.outputs)
        if not path.refine(tolerance, 256):
            return row, combine(feature, targets, path)


@pytest.mark.parametrize("task_type", HEADS)
def test_attributions_add_up_to_the_change_of_the_output(encoder: FrozenEncoder,
                                                          task_type: str) -> None:
    served = Served(encoder)
    slot = served.add(3, head=HEADS[task_type])
    features = get_task(task_type).tokenize(encoder.tokenizer, [TextInput(
        "john visited paris and it was fun", question="who was it ?" if "question" in task_type
        else None)], 128)
    row, explanations = _explained(served, task_type, slot, features[0])
    assert explanations, f"nothing to explain in {row}"
    for e in explanations:
        total = sum(w.score for w in e.attributions)
        assert abs(total - (e.output - e.baseline)) <= 0.01 * abs(e.output - e.baseline) + 1e-6
        assert e.delta == pytest.approx(total - (e.output - e.baseline))
        assert abs(e.output - e.baseline) > 1e-4  # the test would pass on a dead output


def test_a_mixed_batch_of_two_adapters_gives_each_row_its_attributions_alone(
        encoder: FrozenEncoder) -> None:
    served = Served(encoder)
    bottleneck, lora = served.add(1), served.add(2, AdapterConfig(method="lora"))
    items = [(bottleneck, text(encoder, "the film was good"), whole([Target(label=1)])),
             (lora, text(encoder, "bad", "not very fun"), whole([Target(label=0)], steps=7)),
             (lora, text(encoder, "john visited london today"),
              whole([Target(label=0), Target(label=1)])),
             (bottleneck, text(encoder, "boring"), whole([Target(label=0)], steps=3))]
    together = served.explain(items)
    for item, got in zip(items, together, strict=True):
        (alone,) = served.explain([item])
        assert_close(got.terms, alone.terms, atol=1e-6, rtol=1e-5)
        assert_close(got.outputs, alone.outputs)


def test_chunks_of_the_points_add_up_to_the_whole_path(encoder: FrozenEncoder) -> None:
    served = Served(encoder)
    slot = served.add(1)
    feature = text(encoder, "the movie was fun")
    chunk = whole([Target(label=1)], steps=8)
    (full,) = served.explain([(slot, feature, chunk)])
    parts = served.explain([(slot, feature, PathChunk(chunk.targets, chunk.alphas[lo:lo + 4]))
                            for lo in range(0, 9, 4)])
    assert [len(p.terms) for p in parts] == [4, 4, 1]
    (whole_path,) = combine(feature, list(chunk.targets), integral(8, [full]))
    (chunked,) = combine(feature, list(chunk.targets), integral(8, parts))
    assert [w.score for w in chunked.attributions] == pytest.approx(
        [w.score for w in whole_path.attributions], abs=1e-6)
    assert (chunked.output, chunked.baseline) == pytest.approx(
        (whole_path.output, whole_path.baseline), abs=1e-6)


def test_clenshaw_curtis_is_nested_and_exact_for_polynomials_of_its_degree() -> None:
    for steps in (1, 2, 5, 8, 16, 64):
        nodes, weights = clenshaw_curtis(steps)
        assert nodes[0] == 0 and nodes[-1] == 1 and len(nodes) == steps + 1
        assert set(nodes) <= set(clenshaw_curtis(2 * steps)[0])  # refining reuses every point
        alphas = [node_alpha(k) for k in nodes]
        assert (alphas[0], alphas[-1]) == (0.0, 1.0)
        for degree in range(steps + 1):  # the integral of a^d over [0, 1] is 1 / (d + 1)
            assert sum(w * a ** degree for a, w in zip(alphas, weights, strict=True)) == \
                pytest.approx(1 / (degree + 1), abs=1e-12)


def test_a_path_is_refined_until_its_delta_is_within_the_tolerance(
        encoder: FrozenEncoder) -> None:
    served = Served(encoder)
    slot = served.add(5)
    feature = text(encoder, "the film was not very good", "it was slow")
    targets = (Target(label=0),)
    path, taken, deltas = PathIntegral(2), 0, []
    while True:
        nodes = path.missing()
        assert not set(nodes) & set(path.terms)  # a point is never taken twice
        taken += len(nodes)
        (part,) = served.explain([(slot, feature, PathChunk(targets, tuple(map(node_alpha,
                                                                             nodes))))])
        path.add(nodes, part.terms, part.outputs)
        output, baseline = path.ends()
        deltas.append(abs(float(path.tokens().sum() - (output - baseline)[0])))
        if not path.refine(1e-4, 64):
            break
    assert taken == path.steps + 1  # every point of the last rule, each once
    change = abs(float(output[0] - baseline[0]))
    assert deltas[0] > 1e-4 * change, "the coarse rule was already exact: nothing was tested"
    assert deltas[-1] <= 1e-4 * change or path.steps == 64
    assert deltas[-1] < deltas[0]
    assert not PathIntegral.refine(path, 0.0, 10 ** 6)  # tolerance 0: never refined


def test_the_baseline_replaces_every_word_with_mask(encoder: FrozenEncoder) -> None:
    feature = text(encoder, "the film", "was slow")
    tokenizer = encoder.tokenizer
    assert tokenizer.baseline_id == tokenizer.tokenizer.mask_token_id
    ids = baseline_ids(feature, tokenizer.baseline_id)
    assert [t for t, s in zip(ids, feature.sequence_ids, strict=True) if s is not None] == \
        [tokenizer.baseline_id] * 4
    assert [t for t, s in zip(ids, feature.sequence_ids, strict=True) if s is None] == \
        [t for t, s in zip(feature.input_ids, feature.sequence_ids, strict=True) if s is None]


def test_no_gradient_reaches_a_parameter(encoder: FrozenEncoder) -> None:
    served = Served(encoder)
    slot = served.add(1, AdapterConfig(method="lora"))
    served.heads[slot].requires_grad_(True)  # even a head that could take one gets none
    served.explain([(slot, text(encoder, "the film was good"), whole([Target(label=1)]))])
    tensors = [*encoder.model.parameters(), *served.heads[slot].parameters(),
               *(t for f in served.bank._families.values() for w in f.points if w is not None
                 for t in w.tensors())]
    assert tensors and all(t.grad is None for t in tensors)
    assert not any(p.requires_grad for p in encoder.model.parameters())


def _no_mixing_lora(encoder: FrozenEncoder) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """A LoRA adapter whose update cancels every attention output projection (B A = -W): no
    token then sees another, so each token's output depends on its own word only."""
    h, layers = encoder.info.hidden_size, encoder.info.num_layers
    config = AdapterConfig(method="lora", r=h, alpha=float(h), target_modules=["attn_output"])
    weights = {n: p for n, p in encoder.model.named_parameters()
               if "attention.output" in n and "dense" in n and n.endswith("weight")}
    assert len(weights) == layers
    tensors = {}
    for i in range(layers):
        (w,) = [p for n, p in weights.items() if f"layer.{i}." in n]
        tensors[f"layers.{i}.lora.attn_output.A"] = torch.eye(h)
        tensors[f"layers.{i}.lora.attn_output.B"] = -w.detach().clone()
    return config, tensors


def test_a_word_that_cannot_change_an_entity_gets_no_attribution(encoder: FrozenEncoder) -> None:
    served = Served(encoder)
    config, tensors = _no_mixing_lora(encoder)
    slot = served.bank.add(config, tensors)
    head = get_task("token_classification").build_head(HEADS["token_classification"], 32).eval()
    with torch.no_grad():
        head.out.bias.copy_(torch.tensor([0.0, 6.0, 0.0]))  # every word a one-word entity
    served.heads[slot] = head.requires_grad_(False)
    feature = text(encoder, "john visited paris today")
    row, explanations = _explained(served, "token_classification", slot, feature)
    assert [e.text for e in row.entities] == ["john", "visited", "paris", "today"]
    for j, e in enumerate(explanations):
        for k, word in enumerate(e.attributions):
            if k != j:
                assert word.score == pytest.approx(0.0, abs=1e-8), (e.label, word)
        assert abs(e.attributions[j].score) > 1e-3
        assert e.attributions[j].score == pytest.approx(e.output - e.baseline, abs=1e-4)


@pytest.mark.parametrize(("inputs", "task_type", "expected"), [
    ([TextInput("the filmx was good")], "classification",
     [("text", "the"), ("text", "filmx"), ("text", "was"), ("text", "good")]),
    ([TextInput("bad , very", "it was funny")], "classification",
     [("text", "bad"), ("text", ","), ("text", "very"), ("text_pair", "it"),
      ("text_pair", "was"), ("text_pair", "funny")]),
    ([TextInput(tokens=["john", "visitedx", "paris"])], "token_classification",
     [("text", "john"), ("text", "visitedx"), ("text", "paris")]),
    ([TextInput("mary works at acmes", question="who worksx ?")], "question_answering",
     [("question", "who"), ("question", "worksx"), ("question", "?"), ("context", "mary"),
      ("context", "works"), ("context", "at"), ("context", "acmes")]),
])
def test_words_merge_their_sub_tokens_and_point_into_their_text(
        encoder: FrozenEncoder, inputs: list[TextInput], task_type: str,
        expected: list[tuple[str, str]]) -> None:
    (feature,) = get_task(task_type).tokenize(encoder.tokenizer, inputs, 128)
    scores = [float(i) for i in range(len(feature))]
    words = word_scores(feature, scores)
    assert [(w.source, w.text) for w in words] == expected
    texts = dict(feature.sources)
    assert all(texts[w.source][w.start:w.end] == w.text for w in words)
    special = [s for s, q in zip(scores, feature.sequence_ids, strict=True) if q is None]
    assert sum(w.score for w in words) == sum(scores) - sum(special)
    assert len(feature) > len(words) + len(special)  # sub-tokens were merged


def test_rows_of_an_explain_pass_are_grouped_by_length_padding_little() -> None:
    lengths, widths = [10, 40, 11, 39, 12, 10], [16, 16, 16, 16, 16, 2]
    groups = length_groups(lengths, widths)
    assert groups == [[0, 5, 2, 4], [3, 1]]
    for g in groups:
        padded = max(lengths[i] for i in g) * sum(widths[i] for i in g)
        assert padded <= 1.25 * sum(lengths[i] * widths[i] for i in g)
    assert length_groups([500], [3]) == [[0]]

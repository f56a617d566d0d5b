"""Token classification (NER): a BIO tag per word, decoded into entity spans, scored by entity F1."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from app.errors import InvalidInputError
from app.model.adapter import ACTIVATIONS
from app.model.attribution import Explanation
from app.model.tokenization import Feature, TextEncoder
from app.tasks.base import (
    DecodeOptions,
    Examples,
    Head,
    HeadConfig,
    Prediction,
    Target,
    Task,
    TaskDefaults,
    TextInput,
)

WORD_RE = re.compile(r"\w+|[^\w\s]")
IGNORE = -100  # target of the tokens that are not a word's first sub-token: not in the loss


@dataclass(frozen=True)
class Entity:
    text: str
    label: str
    start: int  # character offsets into the input text
    end: int
    score: float  # mean probability of the entity's word tags
    # (first token of each word, its tag's index): what the score reads, and an explanation
    cells: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False, kw_only=True)
    explanation: Explanation | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class TaggedToken:
    token: str
    tag: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class EntitiesResult(Prediction):
    entities: list[Entity]
    tokens: list[TaggedToken] | None = None  # only when asked for (return_tokens)


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities (type, first, last) in a BIO/IOB2 tag sequence, the conlleval way: an I- that
    does not continue an entity of its own type starts a new one."""
    spans: list[tuple[str, int, int]] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            spans.append((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = label, i
    return spans


def word_spans(feature: Feature) -> list[tuple[int, int, int]]:
    """Per word (in order): its first token's index and its character span in feature.text."""
    spans: dict[int, list[int]] = {}
    for i, w in enumerate(feature.word_ids):
        if w is None:
            continue
        start, end = feature.offsets[i]
        if w not in spans:
            spans[w] = [i, start, end]
        else:
            spans[w][2] = end
    return [(first, start, end) for first, start, end in spans.values()]


class TokenClassificationHead(Head):
    """Per token -> tag logits; decoded per word (its first sub-token) into entity spans."""

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.dense = nn.Linear(hidden_size, hidden_size) if config.layers == 2 else None
        self.act = ACTIVATIONS[config.activation]
        self.out = nn.Linear(hidden_size, len(config.labels))

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, T, L)
        if self.dense is not None:
            hidden = self.act(self.dense(self.dropout(hidden)))
        logits: Tensor = self.out(self.dropout(hidden))
        return logits

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return super().predict(hidden, attention_mask).softmax(-1)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        # targets (B, T): a tag index on each word's first sub-token, IGNORE elsewhere
        return nn.functional.cross_entropy(outputs.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=IGNORE, label_smoothing=label_smoothing)

    def decode(self, output: Tensor, feature: Feature, options: DecodeOptions) -> EntitiesResult:
        words = word_spans(feature)
        tags: list[str] = []
        scores: list[float] = []
        picked: list[int] = []
        if words:
            best = output[[first for first, _, _ in words]].max(-1)  # over (W, L)
            picked = best.indices.tolist()
            tags = [self.config.labels[i] for i in picked]
            scores = best.values.tolist()
        text = feature.text
        entities = [Entity(text[words[a][1]:words[b][2]], kind, words[a][1], words[b][2],
                           sum(scores[a:b + 1]) / (b - a + 1),
                           cells=tuple((words[j][0], picked[j]) for j in range(a, b + 1)))
                    for kind, a, b in bio_spans(tags)]
        tokens = [TaggedToken(text[s:e], t, s, e, p)
                  for (_, s, e), t, p in zip(words, tags, scores, strict=True)
                  ] if options.return_tokens else None
        return EntitiesResult(entities, tokens)

    def attributed(self, output: Tensor, target: Target) -> Tensor:  # (S, T, L) -> (S,)
        """An entity's score: the mean probability of its words' tags."""
        return torch.stack([output[:, t, c] for t, c in target.cells], 1).mean(1)


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]
                  ) -> dict[str, float]:
    """Entity-level precision, recall and F1 over sentences (CoNLL-2003 definition: an entity
    counts only when its type and both boundaries match)."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(bio_spans(g)), set(bio_spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _check_words(row: dict[str, Any], where: str, max_chars: int) -> tuple[list[str], list[str]]:
    words, tags = row.get("tokens"), row.get("tags")
    for key, value in (("tokens", words), ("tags", tags)):
        if not isinstance(value, list) or not value or not all(
                isinstance(x, str) and x for x in value):
            raise InvalidInputError(f"{where}.{key} must be a non-empty list of strings")
    assert isinstance(words, list) and isinstance(tags, list)
    if len(words) != len(tags):
        raise InvalidInputError(f"{where} has {len(words)} tokens but {len(tags)} tags")
    if sum(len(w) + 1 for w in words) > max_chars:
        raise InvalidInputError(f"{where} is longer than {max_chars} characters")
    return list(words), list(tags)


def _words_from_entities(row: dict[str, Any], where: str, max_chars: int
                         ) -> tuple[list[str], list[str]]:
    text, entities = row.get("text"), row.get("entities", [])
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{where}.text must be a non-empty string")
    if len(text) > max_chars:
        raise InvalidInputError(f"{where}.text has {len(text)} characters; the limit is {max_chars}")
    if not isinstance(entities, list):
        raise InvalidInputError(f"{where}.entities must be a list")
    spans = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
    tags = ["O"] * len(spans)
    for j, ent in enumerate(entities):
        at = f"{where}.entities[{j}]"
        if not isinstance(ent, dict) or not all(isinstance(ent.get(k), int) for k in ("start", "end")) \
                or not isinstance(ent.get("label"), str) or not ent["label"]:
            raise InvalidInputError(f"{at} needs integer start, end and a label")
        start, end = ent["start"], ent["end"]
        if not 0 <= start < end <= len(text):
            raise InvalidInputError(f"{at} span [{start}, {end}) is outside the text "
                                    f"(length {len(text)})")
        inside = [k for k, (a, b) in enumerate(spans) if a < end and b > start]
        if not inside or spans[inside[0]][0] != start or spans[inside[-1]][1] != end:
            raise InvalidInputError(f"{at} span [{start}, {end}) ({text[start:end]!r}) does not "
                                    f"start and end on word boundaries")
        if any(tags[k] != "O" for k in inside):
            raise InvalidInputError(f"{at} overlaps another entity")
        for n, k in enumerate(inside):
            tags[k] = ("B-" if n == 0 else "I-") + ent["label"]
    return [text[a:b] for a, b in spans], tags


def _check_tags(tags: list[list[str]], what: str) -> None:
    for i, seq in enumerate(tags):
        for t in seq:
            if t != "O" and (t[:2] not in ("B-", "I-") or len(t) < 3):
                raise InvalidInputError(f"{what}[{i}] has tag {t!r}: use O, B-TYPE or I-TYPE")


def _word_tags(output: Tensor, feature: Feature, labels: list[str], n_words: int) -> list[str]:
    """The tag of each word (its first sub-token's best); words cut off by truncation get O."""
    tags = ["O"] * n_words
    seen: set[int] = set()
    for i, w in enumerate(feature.word_ids):
        if w is not None and w not in seen:
            seen.add(w)
            tags[w] = labels[int(output[i].argmax())]
    return tags


class TokenClassification(Task):
    name = "token_classification"
    defaults = TaskDefaults(epochs=5, learning_rate=2e-3, max_seq_length=128)
    head_type = TokenClassificationHead
    min_labels = 2
    accepts_pairs = False
    accepts_tokens = True


    def read_rows(self, rows: list[Any], what: str, max_chars: int) -> Examples:
        """{"tokens", "tags"} rows, or {"text", "entities": [{start, end, label}]} rows, as
        words and BIO tags."""
        words_out, tags_out = [], []
        for i, row in enumerate(rows):
            where = f"{what}[{i}]"
            if not isinstance(row, dict):
                raise InvalidInputError(f"{where} must be an object with tokens and tags")
            if "tokens" in row:
                words, tags = _check_words(row, where, max_chars)
            elif "text" in row:
                words, tags = _words_from_entities(row, where, max_chars)
            else:
                raise InvalidInputError(f"{where} needs tokens and tags, or text and entities")
            words_out.append(words)
            tags_out.append(tags)
        _check_tags(tags_out, what)
        return Examples([" ".join(w) for w in words_out], [None] * len(words_out), tags_out,
                        words_out)

    def labels(self, train: Examples, given: list[str] | None) -> list[str]:
        seen = sorted({t for seq in train.targets for t in seq}, key=lambda t: (t != "O", t[2:], t))
        if given is None:
            return seen if "O" in seen else ["O", *seen]
        return given

    def targets(self, examples: Examples, labels: list[str], what: str) -> Examples:
        unknown = sorted({t for seq in examples.targets for t in seq} - set(labels))
        if unknown:
            raise InvalidInputError(f"{what} has tags {unknown} that are not in labels {labels}")
        index = {t: i for i, t in enumerate(labels)}
        return Examples(examples.texts, examples.pairs,
                        [[index[t] for t in seq] for seq in examples.targets], examples.words)

    def encode(self, tokenizer: TextEncoder, examples: Examples, max_length: int,
               stride: int) -> tuple[list[Feature], list[Any]]:
        """A tag index on each word's first sub-token, IGNORE on every other token."""
        assert examples.words is not None
        features = tokenizer.encode_words(examples.words, max_length)
        targets = []
        for feature, tags in zip(features, examples.targets, strict=True):
            seen: set[int] = set()
            aligned = []
            for w in feature.word_ids:
                aligned.append(IGNORE if w is None or w in seen else tags[w])
                if w is not None:
                    seen.add(w)
            targets.append(aligned)
        return features, targets

    def collate_targets(self, targets: list[Any], length: int) -> Tensor:
        out = torch.full((len(targets), length), IGNORE, dtype=torch.long)  # (B, T)
        for i, t in enumerate(targets):
            out[i, :len(t)] = torch.tensor(t)
        return out

    def evaluate(self, head: Head, outputs: list[Tensor], features: list[Feature],
                 examples: Examples, labels: list[str]) -> dict[str, float]:
        gold = [[labels[t] for t in seq] for seq in examples.targets]
        pred = [_word_tags(o, f, labels, len(seq))
                for o, f, seq in zip(outputs, features, examples.targets, strict=True)]
        return entity_scores(gold, pred)

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        return metrics["f1"], metrics["precision"]

    def tokenize(self, tokenizer: TextEncoder, inputs: list[TextInput], stride: int
                 ) -> list[Feature]:
        """Pre-split words where given, else the text."""
        split = [n for n, i in enumerate(inputs) if i.tokens is not None]
        texts = [n for n, i in enumerate(inputs) if i.tokens is None]
        by_input: dict[int, Feature] = {}
        words = [inputs[n].tokens or [] for n in split]
        for idx, feats in ((split, tokenizer.encode_words(words)),
                           (texts, tokenizer.encode([inputs[n].text for n in texts]))):
            by_input.update(zip(idx, feats, strict=True))
        return [by_input[n] for n in range(len(inputs))]

    def explain_targets(self, features: list[Feature], rows: list[Prediction], wanted: list[bool],
                        labels: list[str], label: str | None, options: DecodeOptions
                        ) -> list[list[Target]]:
        """Each entity of an explained input: which words made it."""
        out: list[list[Target]] = []
        for row, want in zip(rows, wanted, strict=True):
            assert isinstance(row, EntitiesResult)
            out.append([Target(cells=e.cells, name=e.label) for e in row.entities] if want else [])
        return out

    def explained(self, predictions: list[Prediction], features: list[Feature],
                  explanations: list[list[Explanation]]) -> list[Prediction]:
        out: list[Prediction] = []
        for p, found in zip(predictions, explanations, strict=True):
            assert isinstance(p, EntitiesResult)
            out.append(replace(p, entities=[replace(e, explanation=x) for e, x in
                                            zip(p.entities, found, strict=True)]) if found else p)
        return out


TASK = TokenClassification()

"""Text to token ids (one Feature per row) and Features to padded tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.errors import InvalidInputError


@dataclass
class Feature:
    """One tokenized row. `offsets` (character spans per token, into the token's own text) serve
    heads that point into text, and attributions that name words."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    offsets: list[tuple[int, int]] = field(default_factory=list)
    word_ids: list[int | None] = field(default_factory=list)  # token -> word (None: special)
    text: str = ""  # what heads point into: the text (QA: the context)
    group: int = 0  # QA: which input this window belongs to
    # token -> which text it comes from, an index into `sources` (None: special token)
    sequence_ids: list[int | None] = field(default_factory=list)
    # (input field, text) by sequence id: ("text",), ("text", "text_pair"), ("question", "context")
    sources: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedBatch:
    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    token_type_ids: Tensor | None  # (B, T)

    def pin_memory(self) -> EncodedBatch:
        return EncodedBatch(self.input_ids.pin_memory(), self.attention_mask.pin_memory(),
                            None if self.token_type_ids is None else self.token_type_ids.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = False) -> EncodedBatch:
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return EncodedBatch(move(self.input_ids), move(self.attention_mask),
                            None if self.token_type_ids is None else move(self.token_type_ids))


CONTEXT = 1  # question answering: the sequence id of the context (the question is 0)


class TextEncoder:
    """Wraps a fast tokenizer: truncation to max_length, pairs, and padding for a batch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # What explanations replace the words with (attribution.baseline_ids).
        mask_id = tokenizer.mask_token_id
        self.baseline_id = mask_id if isinstance(mask_id, int) else self.pad_id
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names

    def encode(self, texts: list[str], pairs: list[str | None] | None = None,
               max_length: int | None = None) -> list[Feature]:
        """Tokenize rows; pairs[i] None means a single text. Pairs are truncated longest-first."""
        limit = min(max_length or self.max_length, self.max_length)
        if pairs is None or all(p is None for p in pairs):
            return self._encode(texts, None, limit)
        by_row: dict[int, Feature] = {}
        singles = [i for i, p in enumerate(pairs) if p is None]
        doubles = [i for i, p in enumerate(pairs) if p is not None]
        for idx, feats in (
            (singles, self._encode([texts[i] for i in singles], None, limit)),
            (doubles, self._encode([texts[i] for i in doubles], [pairs[i] for i in doubles], limit)),
        ):
            by_row.update(zip(idx, feats, strict=True))
        return [by_row[i] for i in range(len(texts))]

    def _encode(self, texts: list[str], pairs: list[str | None] | None, limit: int) -> list[Feature]:
        if not texts:
            return []
        enc = self.tokenizer(
            texts, pairs, truncation=True, max_length=limit,
            return_offsets_mapping=True, return_attention_mask=False,
        )
        types = enc.get("token_type_ids") if self.uses_token_types else None
        return [
            Feature(ids, types[i] if types is not None else None, list(enc["offset_mapping"][i]),
                    enc.word_ids(i), texts[i], sequence_ids=enc.sequence_ids(i),
                    sources=(("text", texts[i]),) if pairs is None
                    else (("text", texts[i]), ("text_pair", pairs[i] or "")))
            for i, ids in enumerate(enc["input_ids"])
        ]

    def encode_qa(self, questions: list[str], contexts: list[str], stride: int,
                  max_length: int | None = None) -> list[Feature]:
        """Question + context windows: a long context is split into windows overlapping by
        `stride` tokens. Sequence 0 is the question, 1 the context (CONTEXT): only context
        tokens can be part of an answer."""
        if not questions:
            return []
        limit = min(max_length or self.max_length, self.max_length)
        longest = max(len(ids) for ids in self.tokenizer(questions)["input_ids"])
        room = limit - longest - 1  # context tokens per window (question, CLS, SEP, SEP)
        if room < 8:
            raise InvalidInputError(f"a question of {longest} tokens leaves no room for its "
                                    f"context within {limit} tokens")
        stride = min(stride, room // 2)  # windows must still advance
        try:
            enc = self.tokenizer(questions, contexts, truncation="only_second", max_length=limit,
                                 stride=stride, return_overflowing_tokens=True,
                                 return_offsets_mapping=True, return_attention_mask=False)
        except Exception as exc:  # the tokenizer's own words for "the question leaves no room"
            raise InvalidInputError(f"a question is too long to leave room for its context "
                                    f"within {limit} tokens: {exc}") from exc
        types = enc.get("token_type_ids") if self.uses_token_types else None
        features = []
        for i, ids in enumerate(enc["input_ids"]):
            example = enc["overflow_to_sample_mapping"][i]
            features.append(Feature(
                ids, types[i] if types is not None else None, list(enc["offset_mapping"][i]),
                enc.word_ids(i), contexts[example], group=example,
                sequence_ids=enc.sequence_ids(i),
                sources=(("question", questions[example]), ("context", contexts[example]))))
        return features

    def encode_words(self, words: list[list[str]], max_length: int | None = None
                     ) -> list[Feature]:
        """Pre-split words; offsets point into the words joined by single spaces."""
        if not words:
            return []
        limit = min(max_length or self.max_length, self.max_length)
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=limit,
                             return_offsets_mapping=True, return_attention_mask=False)
        types = enc.get("token_type_ids") if self.uses_token_types else None
        features = []
        for i, ids in enumerate(enc["input_ids"]):
            starts = [0]
            for w in words[i][:-1]:
                starts.append(starts[-1] + len(w) + 1)
            word_ids = enc.word_ids(i)
            offsets = [(0, 0) if w is None else (starts[w] + a, starts[w] + b)
                       for w, (a, b) in zip(word_ids, enc["offset_mapping"][i], strict=True)]
            text = " ".join(words[i])
            features.append(Feature(ids, types[i] if types is not None else None, offsets,
                                    word_ids, text, sequence_ids=enc.sequence_ids(i),
                                    sources=(("text", text),)))
        return features

    def collate(self, features: list[Feature]) -> EncodedBatch:
        """Pad to the longest row (right padding)."""
        b, t = len(features), max(len(f) for f in features)
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        types = torch.zeros((b, t), dtype=torch.long) if self.uses_token_types else None
        for i, f in enumerate(features):
            n = len(f)
            ids[i, :n] = torch.tensor(f.input_ids)
            mask[i, :n] = 1
            if types is not None and f.token_type_ids is not None:
                types[i, :n] = torch.tensor(f.token_type_ids)
        return EncodedBatch(ids, mask, types)

"""What sentence-level task types share: {text, text_pair?, label} rows and a pooled head."""

from __future__ import annotations

from abc import abstractmethod
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
)


@dataclass(frozen=True)
class SentenceResult(Prediction):
    """What the predictions of sentence-level types share: their explanation, when asked for."""

    explanation: Explanation | None = field(default=None, kw_only=True)


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """(B, T, H) -> (B, H): the first token, or the mean over real (unpadded) tokens."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class SequenceHead(Head):
    """Pooled sequence (or BERT's pooler) -> [dense + activation] -> `outputs` numbers (logits,
    or one value). The default: mean pooling, a tanh hidden layer."""

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.pooler = nn.Linear(hidden_size, hidden_size) if config.use_pooler else None
        self.dense = nn.Linear(hidden_size, hidden_size) if (config.layers or 2) == 2 else None
        self.out = nn.Linear(hidden_size, self.outputs())
        self.dropout = nn.Dropout(config.dropout)
        self.act = ACTIVATIONS[config.activation]

    @abstractmethod
    def outputs(self) -> int:
        """Width of the output layer."""

    def features(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, n_out)
        if self.pooler is not None:
            x = torch.tanh(self.pooler(hidden[:, 0]))
        else:
            x = pool(hidden, attention_mask, self.config.pooling)
        if self.dense is not None:
            x = self.act(self.dense(self.dropout(x)))
        out: Tensor = self.out(self.dropout(x))
        return out

    def attributed(self, output: Tensor, target: Target) -> Tensor:  # (S, L) or (S,) -> (S,)
        return output if output.dim() == 1 else output[:, target.label]


def check_text_rows(rows: list[Any], what: str, max_chars: int, target: str = "label"
                    ) -> Examples:
    """{"text", "text_pair"?, `target`} rows; the targets stay as given."""
    texts, pairs, labels = [], [], []
    for i, row in enumerate(rows):
        where = f"{what}[{i}]"
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where} must be an object with text and {target}")
        if target not in row or row[target] is None:
            raise InvalidInputError(f"{where} has no {target!r}")
        for key in ("text", "text_pair"):
            value = row.get(key)
            if key == "text_pair" and value is None:
                continue
            if not isinstance(value, str):
                got = "nothing" if value is None else type(value).__name__
                raise InvalidInputError(f"{where}.{key} must be a string, got {got}")
            if not value.strip():
                raise InvalidInputError(f"{where}.{key} is empty")
            if len(value) > max_chars:
                raise InvalidInputError(f"{where}.{key} has {len(value)} characters; the limit "
                                        f"is {max_chars}")
        texts.append(row["text"])
        pairs.append(row.get("text_pair"))
        labels.append(row[target])
    return Examples(texts, pairs, labels)


class SequenceTask(Task):
    """A task type with one output per text (or text pair)."""

    def read_rows(self, rows: list[Any], what: str, max_chars: int) -> Examples:
        return check_text_rows(rows, what, max_chars)

    def encode(self, tokenizer: TextEncoder, examples: Examples, max_length: int,
               stride: int) -> tuple[list[Feature], list[Any]]:
        return tokenizer.encode(examples.texts, examples.pairs, max_length), examples.targets

    @abstractmethod
    def target(self, prediction: Prediction, labels: list[str], label: str | None) -> Target:
        """The output of one prediction that an explanation attributes."""

    def explain_targets(self, features: list[Feature], rows: list[Prediction], wanted: list[bool],
                        labels: list[str], label: str | None, options: DecodeOptions
                        ) -> list[list[Target]]:
        return [[self.target(row, labels, label)] if want else []
                for row, want in zip(rows, wanted, strict=True)]

    def explained(self, predictions: list[Prediction], features: list[Feature],
                  explanations: list[list[Explanation]]) -> list[Prediction]:
        out: list[Prediction] = []
        for p, found in zip(predictions, explanations, strict=True):
            assert isinstance(p, SentenceResult)
            out.append(replace(p, explanation=found[0]) if found else p)
        return out


def label_target(scores: dict[str, float], labels: list[str], label: str | None) -> Target:
    """A label's output: `label` when given, else the most probable (the predicted) label."""
    name = label if label is not None else max(scores, key=scores.__getitem__)
    return Target(label=labels.index(name), name=name)

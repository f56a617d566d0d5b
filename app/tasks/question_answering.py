"""Extractive question answering: the answer's span in a context, scored by SQuAD EM and F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from app.errors import InvalidInputError
from app.model.attribution import Explanation
from app.model.tokenization import CONTEXT, Feature, TextEncoder
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

PUNCTUATION = set(string.punctuation)


@dataclass(frozen=True)
class AnswerResult(Prediction):
    answer: str  # the span; empty when none was found
    start: int  # character offsets into the context
    end: int
    score: float
    explanation: Explanation | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class WindowAnswer(AnswerResult):
    """The best span of one window of a long context, before the windows are merged."""

    null_score: float = 0.0  # probability that this window holds no answer
    first: int = 0  # the span's first and last token in the window ([CLS] for no span)
    last: int = 0


def choose_window(windows: list[WindowAnswer], allow_empty: bool) -> tuple[int, bool]:
    """Which window answers, and whether the answer is empty: then the window whose no-answer
    score decided it (the lowest), else the window with the best-scoring span."""
    best = max(range(len(windows)), key=lambda i: windows[i].score)
    null = min(range(len(windows)), key=lambda i: windows[i].null_score)
    if not windows[best].answer or (allow_empty and windows[null].null_score > windows[best].score):
        return null, True
    return best, False


def merge_windows(windows: list[WindowAnswer], allow_empty: bool = False) -> AnswerResult:
    """One answer per input: the best-scoring window's span, or (when allowed and the windows
    agree there is none) an empty answer with the best span's score."""
    best = max(windows, key=lambda w: w.score)
    if choose_window(windows, allow_empty)[1]:
        return AnswerResult("", 0, 0, best.score)
    return AnswerResult(best.answer, best.start, best.end, best.score)


class QuestionAnsweringHead(Head):
    """Per token -> start and end logits; decoded into the best answer span of a window."""

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, T, 2)
        logits: Tensor = self.out(self.dropout(hidden))
        return logits.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e4)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        # targets (B, 2): start and end token of the answer, (0, 0) when it is not in the window
        start = nn.functional.cross_entropy(outputs[..., 0].float(), targets[:, 0])
        end = nn.functional.cross_entropy(outputs[..., 1].float(), targets[:, 1])
        return (start + end) / 2

    def decode(self, output: Tensor, feature: Feature, options: DecodeOptions) -> WindowAnswer:
        """The best span of this window; merge_windows picks the best over an input's windows."""
        n = len(feature)
        logp = output[:n].log_softmax(0)  # (T, 2)
        context = torch.tensor([s == CONTEXT for s in feature.sequence_ids])
        scores = logp[:, 0, None] + logp[None, :, 1]  # (start, end)
        i = torch.arange(n)
        valid = (context[:, None] & context[None, :] & (i[None, :] >= i[:, None])
                 & (i[None, :] - i[:, None] < options.max_answer_tokens))
        null = float((logp[0, 0] + logp[0, 1]).exp())
        if not bool(valid.any()):
            return WindowAnswer("", 0, 0, 0.0, null)
        best = int(scores.masked_fill(~valid, float("-inf")).flatten().argmax())
        s, e = divmod(best, n)
        start, end = feature.offsets[s][0], feature.offsets[e][1]
        return WindowAnswer(feature.text[start:end], start, end, float(scores[s, e].exp()), null,
                            s, e)

    def attributed(self, output: Tensor, target: Target) -> Tensor:  # (S, T, 2) -> (S,)
        """A span's score: p(start) * p(end), each a softmax over the window's tokens (padding
        is masked), as `decode` scores it."""
        probs = output.float().softmax(1)
        return torch.stack([probs[:, t, c] for t, c in target.cells], 1).prod(1)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, truth: str) -> float:
    pred_tokens, true_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred_tokens) & Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1, each the best over an example's gold answers, averaged (0..1)."""
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers, strict=True):
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    n = max(1, len(predictions))
    return {"exact_match": em / n, "f1": f1 / n}


def _check_answers(row: dict[str, Any], where: str) -> dict[str, Any]:
    answers = row.get("answers")
    texts = answers.get("text") if isinstance(answers, dict) else None
    starts = answers.get("answer_start") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not isinstance(starts, list) or not texts \
            or len(texts) != len(starts):
        raise InvalidInputError(f"{where}.answers must be {{\"text\": [...], "
                                f"\"answer_start\": [...]}} of equal, non-zero length")
    context = row["context"]
    for j, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not isinstance(text, str) or not text or not isinstance(start, int) \
                or context[start:start + len(text)] != text:
            raise InvalidInputError(f"{where}.answers[{j}] {text!r} is not inside the context "
                                    f"at {start!r}")
    return {"start": starts[0], "text": texts[0], "answers": list(texts)}


def _answer_tokens(feature: Feature, target: dict[str, Any]) -> tuple[int, int]:
    """The answer's first and last token in the window, or (0, 0) when the window does not
    hold all of it."""
    start, end = target["start"], target["start"] + len(target["text"])
    first = last = None
    for i, s in enumerate(feature.sequence_ids):
        if s != CONTEXT:
            continue
        a, b = feature.offsets[i]
        if first is None and a <= start < b:
            first = i
        if a < end <= b:
            last = i
    return (first, last) if first is not None and last is not None else (0, 0)


class QuestionAnswering(Task):
    name = "question_answering"
    defaults = TaskDefaults(epochs=3, learning_rate=2e-3, max_seq_length=384)
    head_type = QuestionAnsweringHead

    def read_rows(self, rows: list[Any], what: str, max_chars: int) -> Examples:
        """SQuAD-style rows: texts are questions, pairs contexts, targets {"start", "text",
        "answers"} (the first answer trains, all count in evaluation)."""
        questions: list[str] = []
        contexts: list[str | None] = []
        targets: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            where = f"{what}[{i}]"
            if not isinstance(row, dict):
                raise InvalidInputError(f"{where} must be an object with question, context, "
                                        f"answers")
            for key in ("question", "context"):
                value = row.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise InvalidInputError(f"{where}.{key} must be a non-empty string")
                if len(value) > max_chars:
                    raise InvalidInputError(f"{where}.{key} has {len(value)} characters; the "
                                            f"limit is {max_chars}")
            targets.append(_check_answers(row, where))
            questions.append(row["question"])
            contexts.append(row["context"])
        return Examples(questions, contexts, targets)

    def encode(self, tokenizer: TextEncoder, examples: Examples, max_length: int,
               stride: int) -> tuple[list[Feature], list[Any]]:
        contexts = [c or "" for c in examples.pairs]
        features = tokenizer.encode_qa(examples.texts, contexts, stride, max_length)
        return features, [_answer_tokens(f, examples.targets[f.group]) for f in features]

    def collate_targets(self, targets: list[Any], length: int) -> Tensor:
        return torch.tensor(targets, dtype=torch.long)  # (B, 2)

    def evaluate(self, head: Head, outputs: list[Tensor], features: list[Feature],
                 examples: Examples, labels: list[str]) -> dict[str, float]:
        options = DecodeOptions()
        windows = [head.decode(out, f, options) for out, f in zip(outputs, features, strict=True)]
        answers = self._merge(features, windows, len(examples), options)
        return squad_scores([a.answer for a in answers], [t["answers"] for t in examples.targets])

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        return metrics["f1"], metrics["exact_match"]

    def check_input(self, n: int, item: TextInput, adapter: str) -> None:
        if item.question is None:
            raise InvalidInputError(f"inputs[{n}] does not fit adapter {adapter!r}, which is "
                                    f"{self.name}: send {{question, context}}")

    def tokenize(self, tokenizer: TextEncoder, inputs: list[TextInput], stride: int
                 ) -> list[Feature]:
        """Windows of each context, each with the question; Feature.group is the input."""
        return tokenizer.encode_qa([i.question or "" for i in inputs], [i.text for i in inputs],
                                   stride)

    def merge(self, features: list[Feature], predictions: list[Prediction], n_inputs: int,
              options: DecodeOptions) -> list[Prediction]:
        return list(self._merge(features, predictions, n_inputs, options))

    @staticmethod
    def _merge(features: list[Feature], predictions: Sequence[Prediction], n_inputs: int,
               options: DecodeOptions) -> list[AnswerResult]:
        windows = _windows(features, predictions, n_inputs)
        return [merge_windows([w for _, w in group], options.allow_empty) for group in windows]

    def explain_targets(self, features: list[Feature], rows: list[Prediction], wanted: list[bool],
                        labels: list[str], label: str | None, options: DecodeOptions
                        ) -> list[list[Target]]:
        """The answering window of each explained input: its span's start and end ([CLS] for
        both when the answer is empty: the no-answer score)."""
        out: list[list[Target]] = [[] for _ in features]
        for group, want in zip(_windows(features, rows, len(wanted)), wanted, strict=True):
            if want:
                pick, empty = choose_window([w for _, w in group], options.allow_empty)
                i, w = group[pick]
                s, e = (0, 0) if empty else (w.first, w.last)
                out[i] = [Target(cells=((s, 0), (e, 1)))]
        return out

    def explained(self, predictions: list[Prediction], features: list[Feature],
                  explanations: list[list[Explanation]]) -> list[Prediction]:
        out = list(predictions)
        for f, found in zip(features, explanations, strict=True):
            if found:
                answer = out[f.group]
                assert isinstance(answer, AnswerResult)
                out[f.group] = replace(answer, explanation=found[0])
        return out


def _windows(features: list[Feature], predictions: Sequence[Prediction], n_inputs: int
             ) -> list[list[tuple[int, WindowAnswer]]]:
    """Per input, its windows' answers with their feature index."""
    windows: list[list[tuple[int, WindowAnswer]]] = [[] for _ in range(n_inputs)]
    for i, (f, p) in enumerate(zip(features, predictions, strict=True)):
        assert isinstance(p, WindowAnswer)
        windows[f.group].append((i, p))
    return windows


TASK = QuestionAnswering()

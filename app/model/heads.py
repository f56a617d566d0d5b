"""Task heads over the encoder output, one class per task type, built from a HeadConfig."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from app.model.bio import bio_spans
from app.model.tokenization import Feature


class HeadConfig(BaseModel):
    """What a head needs to be rebuilt: the task type, its labels and its shape."""

    model_config = ConfigDict(extra="forbid")

    task_type: Literal["classification", "regression", "token_classification", "question_answering"]
    labels: list[str] = Field(default_factory=list, description="Class names (classification).")
    pooling: Literal["mean", "cls"] = Field("mean", description="How the sequence is pooled.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before each head layer (training).")


class Head(nn.Module):
    """Maps encoder states (B, T, H) to task outputs; decodes one row's output for the API.

    `forward` runs on the device inside the batch; `decode` runs on the CPU per row, with the
    row's Feature (its tokenization) for heads that point back into the text.
    """

    task_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Raw outputs (logits, values), what the loss is computed on."""
        raise NotImplementedError

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Serving outputs (probabilities, values), still on the device."""
        return self(hidden, attention_mask)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        raise NotImplementedError

    def decode(self, output: Tensor, feature: Feature) -> dict[str, Any]:
        raise NotImplementedError


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """(B, T, H) -> (B, H): the first token, or the mean over real (unpadded) tokens."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class SequenceHead(Head):
    """Pooled sequence -> dense + tanh -> n outputs: logits (classification) or one value."""

    task_types = ("classification", "regression")

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        n_out = len(config.labels) if config.task_type == "classification" else 1
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, n_out)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, n_out)
        x = pool(hidden, attention_mask, self.config.pooling)
        x = torch.tanh(self.dense(self.dropout(x)))
        out = self.out(self.dropout(x))
        return out if self.config.task_type == "classification" else out.squeeze(-1)

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        out = self(hidden, attention_mask).float()
        return out.softmax(-1) if self.config.task_type == "classification" else out

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        if self.config.task_type == "classification":
            return nn.functional.cross_entropy(outputs.float(), targets,
                                               label_smoothing=label_smoothing)
        return nn.functional.mse_loss(outputs.float(), targets.float())

    def decode(self, output: Tensor, feature: Feature) -> dict[str, Any]:
        if self.config.task_type == "regression":
            return {"value": float(output)}
        probs = output.tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return {
            "label": self.config.labels[best],
            "score": probs[best],
            "scores": dict(zip(self.config.labels, probs, strict=True)),
        }


class TokenClassificationHead(Head):
    """Per token -> tag logits; decoded per word (its first sub-token) into entity spans."""

    task_types = ("token_classification",)

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(hidden_size, len(config.labels))

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, T, L)
        return self.out(self.dropout(hidden))

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self(hidden, attention_mask).float().softmax(-1)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        # targets (B, T): a tag index on each word's first sub-token, -100 elsewhere
        return nn.functional.cross_entropy(outputs.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=-100, label_smoothing=label_smoothing)

    def decode(self, output: Tensor, feature: Feature) -> dict[str, Any]:
        words = word_spans(feature)
        probs = output[[first for first, _, _ in words]] if words else output[:0]  # (W, L)
        best = probs.max(-1) if words else None
        tags = [self.config.labels[i] for i in best.indices.tolist()] if best else []
        scores = best.values.tolist() if best else []
        text = feature.text
        entities = [
            {"text": text[words[a][1]:words[b][2]], "label": kind, "start": words[a][1],
             "end": words[b][2], "score": sum(scores[a:b + 1]) / (b - a + 1)}
            for kind, a, b in bio_spans(tags)
        ]
        result: dict[str, Any] = {"entities": entities}
        if feature.options.get("return_tokens"):
            result["tokens"] = [{"token": text[s:e], "tag": t, "start": s, "end": e, "score": p}
                                for (_, s, e), t, p in zip(words, tags, scores, strict=True)]
        return result


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


class QuestionAnsweringHead(Head):
    """Per token -> start and end logits; decoded into the best answer span of a window."""

    task_types = ("question_answering",)
    MAX_ANSWER_TOKENS = 30

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__(config, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:  # -> (B, T, 2)
        logits = self.out(self.dropout(hidden))
        return logits.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e4)

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self(hidden, attention_mask).float()

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        # targets (B, 2): start and end token of the answer, (0, 0) when it is not in the window
        start = nn.functional.cross_entropy(outputs[..., 0].float(), targets[:, 0])
        end = nn.functional.cross_entropy(outputs[..., 1].float(), targets[:, 1])
        return (start + end) / 2

    def decode(self, output: Tensor, feature: Feature) -> dict[str, Any]:
        """The best span of this window; merge() picks the best over an input's windows."""
        n = len(feature)
        logp = output[:n].log_softmax(0)  # (T, 2)
        context = torch.tensor([w is not None for w in feature.word_ids])
        limit = int(feature.options.get("max_answer_tokens", self.MAX_ANSWER_TOKENS))  # type: ignore[call-overload]
        scores = logp[:, 0, None] + logp[None, :, 1]  # (start, end)
        i = torch.arange(n)
        valid = (context[:, None] & context[None, :] & (i[None, :] >= i[:, None])
                 & (i[None, :] - i[:, None] < limit))
        null = float((logp[0, 0] + logp[0, 1]).exp())
        if not bool(valid.any()):
            return {"answer": "", "start": 0, "end": 0, "score": 0.0, "null_score": null}
        best = int(scores.masked_fill(~valid, float("-inf")).flatten().argmax())
        s, e = divmod(best, n)
        start, end = feature.offsets[s][0], feature.offsets[e][1]
        return {"answer": feature.text[start:end], "start": start, "end": end,
                "score": float(scores[s, e].exp()), "null_score": null}

    @staticmethod
    def merge(windows: list[dict[str, Any]], allow_empty: bool = False) -> dict[str, Any]:
        """One answer per input: the best-scoring window's span, or (when allowed and the
        windows agree there is none) an empty answer with the no-answer score."""
        best = max(windows, key=lambda w: w["score"])
        null = min(w["null_score"] for w in windows)
        if not best["answer"] or (allow_empty and null > best["score"]):
            return {"answer": "", "start": 0, "end": 0, "score": best["score"]}
        return {k: best[k] for k in ("answer", "start", "end", "score")}


HEAD_TYPES: dict[str, type[Head]] = {
    t: cls for cls in (SequenceHead, TokenClassificationHead, QuestionAnsweringHead)
    for t in cls.task_types}


def build_head(config: HeadConfig, hidden_size: int) -> Head:
    return HEAD_TYPES[config.task_type](config, hidden_size)

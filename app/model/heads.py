"""Task heads over the encoder output, one class per task type, built from a HeadConfig."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from app.model.tokenization import Feature


class HeadConfig(BaseModel):
    """What a head needs to be rebuilt: the task type, its labels and its shape."""

    model_config = ConfigDict(extra="forbid")

    task_type: Literal["classification", "regression"]
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


HEAD_TYPES: dict[str, type[Head]] = {t: cls for cls in (SequenceHead,) for t in cls.task_types}


def build_head(config: HeadConfig, hidden_size: int) -> Head:
    return HEAD_TYPES[config.task_type](config, hidden_size)

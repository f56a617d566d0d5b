"""Training hyper-parameters: every field optional, with defaults that work out of the box."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import ConfigDict, Field

from app.model.adapter import AdapterConfig
from app.tasks import HeadConfig, TaskType, get_task


class TrainConfig(AdapterConfig):
    """What `POST /adapters` accepts under "config" (and the CLI under --config-json).

    The adapter's shape is an AdapterConfig (its fields and defaults, defined once there), so
    the config stays one flat JSON object; the rest shapes the head and the optimisation.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # JSON allows Infinity

    # head
    pooling: Literal["mean", "cls"] = Field("mean", description="How the head pools tokens.")
    head_dropout: float = Field(0.1, ge=0, lt=1)
    base_dropout: bool = Field(True, description="Keep the frozen base's own dropout on while training.")
    # optimisation
    epochs: int | None = Field(None, ge=1, le=100, description="Passes over the training data; "
                               "default per task type (its TaskDefaults).")
    learning_rate: float | None = Field(None, gt=0, le=1, description="Peak learning rate; "
                                        "default per task type (its TaskDefaults).")
    batch_size: int = Field(32, ge=1, le=1024)
    max_seq_length: int | None = Field(None, ge=8, le=4096, description="Tokens per training "
                                       "example; default per task type (its TaskDefaults).")
    doc_stride: int = Field(128, ge=0, description="QA: tokens shared by consecutive windows of "
                            "a long context.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with rising LR.")
    weight_decay: float = Field(0.01, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Classification loss smoothing.")
    head_lr_multiplier: float = Field(1.0, gt=0, le=100,
                                      description="The head's learning rate over the adapter's.")
    patience: int = Field(2, ge=1, description="Epochs without validation gain before stopping.")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5,
                                       description="Held out from train when no validation set.")
    seed: int = Field(42, ge=0, le=2**32 - 1)  # a larger one (torch takes 64 bits) fails late
    max_train_seconds: float | None = Field(None, gt=0, description="Cap on training time.")

    def resolved(self, task_type: str) -> TrainConfig:
        """This config with every per-task default filled in (what training actually uses)."""
        defaults = dataclasses.asdict(get_task(task_type).defaults)
        return self.model_copy(update={k: v for k, v in defaults.items()
                                       if getattr(self, k) is None})

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(**self.model_dump(include=set(AdapterConfig.model_fields)))

    def head_config(self, task_type: TaskType, labels: list[str]) -> HeadConfig:
        return HeadConfig(task_type=task_type, labels=labels, pooling=self.pooling,
                          dropout=self.head_dropout)

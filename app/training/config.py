"""Training hyper-parameters: every field optional, with defaults that work out of the box."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.model.adapter import MAX_LORA_RANK, AdapterConfig
from app.tasks import HeadConfig, TaskType, get_task

Design = Literal["pfeiffer", "houlsby", "lora"]  # a bottleneck placement, or LoRA
DESIGNS: tuple[Design, ...] = ("pfeiffer", "houlsby", "lora")


class SearchSpace(BaseModel):
    """What a search may choose from; a field left out takes its default, for learning rate and
    epochs derived from the task type's TaskDefaults (see app/training/space.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    designs: list[Design] | None = Field(None, min_length=1, description="pfeiffer, houlsby "
                                         "(bottleneck placements) and lora.")
    reduction_factors: list[float] | None = Field(
        None, min_length=1, description="Bottleneck width = hidden size / factor.")
    lora_ranks: list[int] | None = Field(None, min_length=1, description="LoRA ranks r "
                                         "(alpha = 2r: the update's scale stays 2).")
    learning_rate: tuple[float, float] | None = Field(
        None, description="[low, high] of a log-uniform learning rate.")
    epochs: tuple[int, int] | None = Field(None, description="[low, high] epochs of a trial.")
    head_layers: list[int] | None = Field(None, min_length=1, description="Head depths: 1, 2.")

    @field_validator("learning_rate")
    @classmethod
    def _rate_range(cls, lr: tuple[float, float] | None) -> tuple[float, float] | None:
        if lr is not None and not 0 < lr[0] <= lr[1] <= 1:
            raise ValueError(f"must be [low, high] with 0 < low <= high <= 1, got {list(lr)}")
        return lr

    @field_validator("epochs")
    @classmethod
    def _epoch_range(cls, epochs: tuple[int, int] | None) -> tuple[int, int] | None:
        if epochs is not None and not 1 <= epochs[0] <= epochs[1] <= 100:
            raise ValueError(f"must be [low, high] with 1 <= low <= high <= 100, got "
                             f"{list(epochs)}")
        return epochs

    @field_validator("reduction_factors", "lora_ranks", "head_layers")
    @classmethod
    def _within(cls, values: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        lo, hi = {"reduction_factors": (1, 1024), "lora_ranks": (1, MAX_LORA_RANK),
                  "head_layers": (1, 2)}[str(info.field_name)]
        bad = [v for v in values or [] if not lo <= v <= hi]
        if bad:
            raise ValueError(f"must lie in [{lo}, {hi}], got {bad}")
        return values


class SearchConfig(BaseModel):
    """config.search: choose the adapter's design and optimisation within one training job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trials: int = Field(20, ge=1, le=500, description="Most configurations tried.")
    budget_s: float = Field(600.0, gt=0, le=7 * 24 * 3600, description="Seconds for the whole "
                            "job (trials and the final training); never over by more than an "
                            "epoch.")
    objective: Literal["quality", "balanced"] = Field(
        "quality", description="quality: the best validation score; balanced: the cheapest "
        "trial within one standard error of the best.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Sampler and split seed; "
                             "default: config.seed.")
    keep_best_on_cancel: bool = Field(False, description="A cancelled search stores its best "
                                      "finished trial instead of nothing.")
    search_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of the training rows "
                                   "held out to judge trials.")
    space: SearchSpace = Field(default_factory=SearchSpace)


class TrainConfig(AdapterConfig):
    """What `POST /adapters` accepts under "config" (and the CLI under --config-json).

    The adapter's shape is an AdapterConfig (its fields and defaults, defined once there), so
    the config stays one flat JSON object; the rest shapes the head and the optimisation.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # JSON allows Infinity

    # head
    pooling: Literal["mean", "cls"] = Field("mean", description="How the head pools tokens.")
    head_dropout: float = Field(0.1, ge=0, lt=1)
    head_layers: int | None = Field(None, ge=1, le=2, description="Head depth: 1 (output layer "
                                    "only) or 2 (a hidden layer first); default: the task type's.")
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
    search: SearchConfig | None = Field(None, description="Search the design and optimisation "
                                        "(fields above are the starting point it varies).")

    def resolved(self, task_type: str) -> TrainConfig:
        """This config with every per-task default filled in (what training actually uses)."""
        defaults = dataclasses.asdict(get_task(task_type).defaults)
        return self.model_copy(update={k: v for k, v in defaults.items()
                                       if getattr(self, k) is None})

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(**self.model_dump(include=set(AdapterConfig.model_fields)))

    def head_config(self, task_type: TaskType, labels: list[str]) -> HeadConfig:
        return HeadConfig(task_type=task_type, labels=labels, pooling=self.pooling,
                          dropout=self.head_dropout, layers=self.head_layers)

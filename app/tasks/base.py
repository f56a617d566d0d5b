"""What every task type provides: its head, its training rows and metrics, its request handling."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from app.errors import InvalidInputError
from app.model.adapter import Activation
from app.model.attribution import Explanation
from app.model.tokenization import Feature, TextEncoder
from app.tasks.registry import TaskType


class HeadConfig(BaseModel):
    """What a head needs to be rebuilt: the task type, its labels and its shape."""

    model_config = ConfigDict(extra="forbid")

    task_type: TaskType
    labels: list[str] = Field(default_factory=list, description="Class names (classification).")
    pooling: Literal["mean", "cls"] = Field("mean", description="How the sequence is pooled.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before each head layer (training).")
    layers: int | None = Field(None, ge=1, le=2, description="Linear layers: 1 (the output layer "
                               "only) or 2 (a hidden layer first); default: the task type's.")
    activation: Activation = Field("tanh", description="Non-linearity after the hidden layer.")
    use_pooler: bool = Field(False, description="Sentence heads: start with a pooler (dense + "
                             "tanh of the first token), as BERT's, instead of `pooling`.")


@dataclass(frozen=True)
class Target:
    """One output of one row that an explanation attributes, as the row's head reads it from
    its serving outputs (see Head.attributed)."""

    label: int = 0  # sentence heads: the label's column
    cells: tuple[tuple[int, int], ...] = ()  # per-token heads: (token, column) cells it reads
    name: str | None = None  # the label or entity type the answer names


@dataclass(frozen=True)
class ExplainOptions:
    """Per-request explanation choices (which inputs are explained: TextInput.explain)."""

    steps: int = 16  # integration steps to start with (steps + 1 points on the path)
    label: str | None = None  # label tasks: explain this label instead of the predicted one
    # Double the steps while |delta| > tolerance * |output - baseline| (up to EXPLAIN_MAX_STEPS;
    # 0: exactly `steps`). None: the service's EXPLAIN_TOLERANCE.
    tolerance: float | None = None


@dataclass(frozen=True)
class DecodeOptions:
    """Per-request decoding choices (each task type reads the ones it has)."""

    return_tokens: bool = False  # token classification: the tag of every word too
    max_answer_tokens: int = 30  # question answering: longest answer span
    allow_empty: bool = False  # question answering: "" when no span beats the no-answer score


class Prediction:
    """One decoded answer for one input; each task type defines its own (typed) subclass."""


class Head(nn.Module, ABC):
    """Maps encoder states (B, T, H) to task outputs; decodes one row's output.

    `forward` runs on the device inside the batch; `decode` runs on the CPU per row, with the
    row's Feature (its tokenization) for heads that point back into the text.
    """

    def __init__(self, config: HeadConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size

    @abstractmethod
    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Raw outputs (logits, values), what the loss is computed on."""

    def predict(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Serving outputs (probabilities, values), still on the device."""
        out: Tensor = self(hidden, attention_mask)
        return out.float()

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor: ...

    @abstractmethod
    def decode(self, output: Tensor, feature: Feature, options: DecodeOptions) -> Prediction: ...

    @abstractmethod
    def attributed(self, output: Tensor, target: Target) -> Tensor:
        """The output an explanation attributes, (S,), from the serving outputs (S, ...) of the
        points on one input's integration path: differentiable, and read the same way as
        `decode` reads the prediction's score."""


@dataclass(frozen=True)
class TextInput:
    """One input of a predict request, before it is checked against the adapter's task type."""

    text: str = ""
    text_pair: str | None = None
    tokens: list[str] | None = None  # pre-split words (token classification)
    question: str | None = None  # question answering: `text` is then the context
    explain: bool = False  # attribute its prediction to its words


@dataclass
class Examples:
    """Rows ready for training: texts, optional pairs, and targets (raw labels until a task's
    `targets` turns them into class indices, values or tag indices)."""

    texts: list[str]
    pairs: list[str | None]
    targets: list[Any]
    words: list[list[str]] | None = None  # token classification: the words the tags belong to

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> Examples:
        return Examples([self.texts[i] for i in idx], [self.pairs[i] for i in idx],
                        [self.targets[i] for i in idx],
                        None if self.words is None else [self.words[i] for i in idx])


@dataclass
class TrainingData:
    task_type: TaskType
    labels: list[str]  # class names or tags; empty for task types without labels
    train: Examples
    validation: Examples
    validation_given: bool


@dataclass(frozen=True)
class TaskDefaults:
    """Training settings whose best value depends on the task type (a request's own value wins)."""

    epochs: int
    learning_rate: float
    max_seq_length: int


class Task(ABC):
    """One task type: everything that differs between types lives in its subclass."""

    name: ClassVar[TaskType]
    defaults: ClassVar[TaskDefaults]
    head_type: ClassVar[type[Head]]
    accepts_pairs: ClassVar[bool] = True  # inputs may carry a text_pair
    accepts_tokens: ClassVar[bool] = False  # inputs may be pre-split words
    min_labels: ClassVar[int] = 0  # a stored adapter of this type has at least this many
    explains_labels: ClassVar[bool] = False  # explain_label may name one of its labels

    def build_head(self, config: HeadConfig, hidden_size: int) -> Head:
        return self.head_type(config, hidden_size)

    def check_labels(self, labels: list[str]) -> None:
        """Stored metadata: raise ValueError when the labels do not fit this task type."""
        if len(labels) < self.min_labels:
            raise ValueError(f"a {self.name} adapter needs >= {self.min_labels} labels, got "
                             f"{len(labels)}")

    # ---------------------------------------------------------------------- training data
    @abstractmethod
    def read_rows(self, rows: list[Any], what: str, max_chars: int) -> Examples:
        """Check every row (naming `what[i].field` in errors); targets stay raw labels."""

    def labels(self, train: Examples, given: list[str] | None) -> list[str]:
        """The label list: `given` checked against train, or inferred from it."""
        return []

    def targets(self, examples: Examples, labels: list[str], what: str) -> Examples:
        """The examples with raw labels turned into training targets."""
        return examples

    def strata(self, targets: list[Any]) -> list[Any]:
        """Groups the validation split keeps in proportion."""
        return [0] * len(targets)

    # --------------------------------------------------------------------------- training
    @abstractmethod
    def encode(self, tokenizer: TextEncoder, examples: Examples, max_length: int,
               stride: int) -> tuple[list[Feature], list[Any]]:
        """Features and, per feature, its target."""

    @abstractmethod
    def collate_targets(self, targets: list[Any], length: int) -> Tensor:
        """A batch's targets as one tensor; `length` is the padded token count."""

    @abstractmethod
    def evaluate(self, head: Head, outputs: list[Tensor], features: list[Feature],
                 examples: Examples, labels: list[str]) -> dict[str, float]:
        """Validation metrics from the head's outputs (one per feature)."""

    @abstractmethod
    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        """What picks the best epoch: higher is better, the second number breaks ties."""

    def standard_error(self, score: float, n: int) -> float:
        """Standard error of score()[0] measured on n validation rows: the binomial
        sqrt(s (1 - s) / n), exact for accuracy and a close approximation for F1 or exact match
        (shares of rows or entities that are right). A search's balanced objective uses it."""
        s = min(1.0, max(0.0, score))
        return math.sqrt(s * (1 - s) / max(1, n))

    # ---------------------------------------------------------------------------- serving
    def check_input(self, n: int, item: TextInput, adapter: str) -> None:
        """Refuse an input this task type cannot answer, saying what to send instead."""
        if item.question is not None:
            raise InvalidInputError(f"inputs[{n}] does not fit adapter {adapter!r}, which is "
                                    f"{self.name}: send text")
        if item.tokens is not None and not self.accepts_tokens:
            raise InvalidInputError(f"inputs[{n}] is pre-split tokens, but adapter {adapter!r} is "
                                    f"{self.name}: send text")
        if item.text_pair is not None and not self.accepts_pairs:
            raise InvalidInputError(f"inputs[{n}] has a text_pair, but adapter {adapter!r} tags "
                                    f"single texts")

    def tokenize(self, tokenizer: TextEncoder, inputs: list[TextInput], stride: int
                 ) -> list[Feature]:
        """One Feature per input (question answering: one per window)."""
        return tokenizer.encode([i.text for i in inputs], [i.text_pair for i in inputs])

    def merge(self, features: list[Feature], predictions: list[Prediction], n_inputs: int,
              options: DecodeOptions) -> list[Prediction]:
        """One prediction per input from one per feature."""
        return predictions

    # ------------------------------------------------------------------------- explaining
    def check_explain_label(self, label: str | None, labels: list[str], adapter: str) -> None:
        """Refuse an explain_label this adapter has no output for."""
        if label is None:
            return
        if not self.explains_labels:
            raise InvalidInputError(f"explain_label is for classification adapters; adapter "
                                    f"{adapter!r} is {self.name}")
        if label not in labels:
            raise InvalidInputError(f"explain_label {label!r} is not one of the labels {labels} "
                                    f"of adapter {adapter!r}")

    @abstractmethod
    def explain_targets(self, features: list[Feature], rows: list[Prediction], wanted: list[bool],
                        labels: list[str], label: str | None, options: DecodeOptions
                        ) -> list[list[Target]]:
        """Per feature (`rows`: its prediction), the outputs to attribute: none where its input
        is not `wanted`; `label` (checked) replaces the predicted label."""

    @abstractmethod
    def explained(self, predictions: list[Prediction], features: list[Feature],
                  explanations: list[list[Explanation]]) -> list[Prediction]:
        """The predictions (one per input) with the explanations (per feature, one per target
        of explain_targets) attached."""

"""The predict use case: check a request, tokenize it, batch it, return predictions in order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from app import metrics
from app.adapters.registry import AdapterRegistry
from app.errors import InvalidInputError, PayloadTooLargeError, RequestTimeoutError
from app.model.heads import QuestionAnsweringHead
from app.model.tokenization import Feature, TextEncoder
from app.serving.batcher import Batcher
from app.serving.engine import Row


@dataclass(frozen=True)
class TextInput:
    text: str = ""
    text_pair: str | None = None
    tokens: list[str] | None = None  # pre-split words (token classification)
    question: str | None = None  # question answering: `text` is then the context


@dataclass(frozen=True)
class PredictLimits:
    max_inputs: int
    max_text_chars: int
    timeout_s: float = 30.0
    doc_stride: int = 128  # question answering: overlap of a long context's windows


class PredictionService:
    def __init__(self, registry: AdapterRegistry, tokenizer: TextEncoder,
                 batcher: Batcher[Row], limits: PredictLimits) -> None:
        self.registry = registry
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.limits = limits

    async def predict(self, task: str, inputs: list[TextInput], version: int | None = None,
                      options: dict[str, Any] | None = None) -> tuple[int, list[dict[str, Any]]]:
        """(version served, one prediction per input)."""
        t0 = time.perf_counter()
        version, predictions = await self._predict(task, inputs, version, options)
        metrics.PREDICT_SECONDS.labels(task).observe(time.perf_counter() - t0)
        metrics.PREDICT_INPUTS.labels(task).inc(len(inputs))
        return version, predictions

    async def _predict(self, task: str, inputs: list[TextInput], version: int | None,
                       options: dict[str, Any] | None) -> tuple[int, list[dict[str, Any]]]:
        self._check(inputs)
        key = self.registry.resolve(task, version)
        task_type = self.registry.metadata(key).task_type
        self._check_kind(task, task_type, inputs)
        options = options or {}
        features = await asyncio.to_thread(self.tokenize, inputs, task_type)
        for f in features:
            f.options = options
        try:
            rows = await asyncio.wait_for(
                self.batcher.submit([Row(key, f) for f in features]), self.limits.timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no answer within {self.limits.timeout_s:g} s (REQUEST_TIMEOUT_S); the service is "
                f"overloaded or the request too large") from None
        if task_type != "question_answering":
            return key[1], rows
        windows: list[list[dict[str, Any]]] = [[] for _ in inputs]
        for f, row in zip(features, rows, strict=True):
            windows[f.group].append(row)
        allow_empty = bool(options.get("allow_empty", False))
        return key[1], [QuestionAnsweringHead.merge(w, allow_empty) for w in windows]

    def tokenize(self, inputs: list[TextInput], task_type: str) -> list[Feature]:
        if task_type == "question_answering":
            return self.tokenizer.encode_qa([i.question or "" for i in inputs],
                                            [i.text for i in inputs], self.limits.doc_stride)
        if task_type != "token_classification":
            return self.tokenizer.encode([i.text for i in inputs], [i.text_pair for i in inputs])
        features: list[Feature | None] = [None] * len(inputs)
        split = [n for n, i in enumerate(inputs) if i.tokens is not None]
        texts = [n for n, i in enumerate(inputs) if i.tokens is None]
        for idx, feats in ((split, self.tokenizer.encode_words([inputs[n].tokens for n in split])),
                           (texts, self.tokenizer.encode([inputs[n].text for n in texts]))):
            for n, f in zip(idx, feats, strict=True):
                features[n] = f
        return features  # type: ignore[return-value]

    @staticmethod
    def _check_kind(task: str, task_type: str, inputs: list[TextInput]) -> None:
        for n, item in enumerate(inputs):
            if (item.question is None) == (task_type == "question_answering"):
                want = "{question, context}" if task_type == "question_answering" else "text"
                raise InvalidInputError(f"inputs[{n}] does not fit adapter {task!r}, which is "
                                        f"{task_type}: send {want}")
            if item.tokens is not None and task_type != "token_classification":
                raise InvalidInputError(f"inputs[{n}] is pre-split tokens, but adapter {task!r} is "
                                        f"{task_type}: send text")
            if item.text_pair is not None and task_type == "token_classification":
                raise InvalidInputError(f"inputs[{n}] has a text_pair, but adapter {task!r} tags "
                                        f"single texts")

    def _check(self, inputs: list[TextInput]) -> None:
        if not inputs:
            raise InvalidInputError("inputs is empty: send at least one text")
        if len(inputs) > self.limits.max_inputs:
            raise PayloadTooLargeError(
                f"{len(inputs)} inputs in one request; the limit is {self.limits.max_inputs}",
            )
        for n, item in enumerate(inputs):
            if item.tokens is not None:
                if not all(isinstance(t, str) and t.strip() for t in item.tokens):
                    raise InvalidInputError(f"inputs[{n}].tokens must be non-empty strings")
                item = TextInput(" ".join(item.tokens))
            main = "text" if item.question is None else "context"
            for field_name, value in ((main, item.text), ("text_pair", item.text_pair),
                                      ("question", item.question)):
                if value is not None and len(value) > self.limits.max_text_chars:
                    raise PayloadTooLargeError(
                        f"inputs[{n}].{field_name} has {len(value)} characters; the limit is "
                        f"{self.limits.max_text_chars}",
                    )
                if field_name != "text_pair" and value is not None and not value.strip():
                    raise InvalidInputError(f"inputs[{n}].{field_name} is empty")

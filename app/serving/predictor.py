"""The predict use case: check a request, tokenize it, batch it, return predictions in order."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from dataclasses import dataclass

from app import metrics
from app.adapters.index import Key
from app.adapters.registry import AdapterRegistry
from app.errors import InvalidInputError, PayloadTooLargeError, RequestTimeoutError
from app.model.tokenization import Feature, TextEncoder
from app.serving.batcher import Batcher
from app.serving.engine import Row
from app.serving.explainer import Explainer
from app.tasks import DecodeOptions, Prediction, Task, TextInput, get_task
from app.tasks.base import ExplainOptions


@dataclass(frozen=True)
class PredictLimits:
    max_inputs: int
    max_text_chars: int
    timeout_s: float = 30.0
    doc_stride: int = 128  # question answering: overlap of a long context's windows
    task_labels: int = 100  # adapter names with their own label on the per-task metrics
    explain_max_steps: int = 64
    explain_tolerance: float = 0.05


class PredictionService:
    def __init__(self, registry: AdapterRegistry, tokenizer: TextEncoder,
                 batcher: Batcher[Row], limits: PredictLimits) -> None:
        self.registry = registry
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.limits = limits
        self.explainer = Explainer(batcher, limits.explain_tolerance,
                                   limits.explain_max_steps)
        self._labelled: set[str] = set()

    async def predict(self, task: str, inputs: list[TextInput], version: int | None = None,
                      options: DecodeOptions | None = None,
                      explain: ExplainOptions | None = None) -> tuple[int, list[Prediction]]:
        """(version served, one prediction per input; explained where an input asks)."""
        t0 = time.perf_counter()
        version, predictions = await self._predict(task, inputs, version,
                                                   options or DecodeOptions(),
                                                   explain or ExplainOptions())
        label = self._task_label(task)
        metrics.PREDICT_SECONDS.labels(label).observe(time.perf_counter() - t0)
        metrics.PREDICT_INPUTS.labels(label).inc(len(inputs))
        return version, predictions

    def _task_label(self, name: str) -> str:
        """The name itself for the first `task_labels` names served, then one shared label: the
        exposition stays bounded however many adapters are served."""
        if name in self._labelled:
            return name
        if len(self._labelled) < self.limits.task_labels:
            self._labelled.add(name)
            return name
        return metrics.OTHER_TASKS

    async def _predict(self, name: str, inputs: list[TextInput], version: int | None,
                       options: DecodeOptions, explain: ExplainOptions
                       ) -> tuple[int, list[Prediction]]:
        self._check(inputs, explain)
        key = self.registry.resolve(name, version)
        meta = self.registry.metadata(key)
        task = get_task(meta.task_type)
        for n, item in enumerate(inputs):
            task.check_input(n, item, name)
        task.check_explain_label(explain.label, meta.head_config.labels, name)
        loading = self.registry.prefetch(key)  # not on the device: the loader fetches it now
        features = await asyncio.to_thread(task.tokenize, self.tokenizer, inputs,
                                           self.limits.doc_stride)
        try:
            predictions = await asyncio.wait_for(
                self._answer(key, task, meta.head_config.labels, inputs, features, options,
                             explain, loading), self.limits.timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no answer within {self.limits.timeout_s:g} s (REQUEST_TIMEOUT_S); the service is "
                f"overloaded or the request too large") from None
        return key[1], predictions

    async def _answer(self, key: Key, task: Task, labels: list[str], inputs: list[TextInput],
                      features: list[Feature], options: DecodeOptions, explain: ExplainOptions,
                      loading: Future[None] | None) -> list[Prediction]:
        """Predict; then, when asked, explain those predictions (the heavy lane of the batcher:
        the plain rows of other requests do not wait for these)."""
        if loading is not None:  # shared by every request for this adapter: never cancelled
            await asyncio.shield(asyncio.wrap_future(loading))
        rows = await self.batcher.submit([Row(key, f, options) for f in features])
        predictions = task.merge(features, rows, len(inputs), options)
        if not any(i.explain for i in inputs):
            return predictions
        return await self.explainer.explain(key, task, labels, inputs, features, rows,
                                            predictions, explain, options)

    def _check(self, inputs: list[TextInput], explain: ExplainOptions) -> None:
        if not inputs:
            raise InvalidInputError("inputs is empty: send at least one text")
        if not 1 <= explain.steps <= self.limits.explain_max_steps:
            raise InvalidInputError(f"explain_steps must be between 1 and "
                                    f"{self.limits.explain_max_steps} (EXPLAIN_MAX_STEPS), got "
                                    f"{explain.steps}")
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

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
from app.tasks import DecodeOptions, Prediction, TextInput, get_task


@dataclass(frozen=True)
class PredictLimits:
    max_inputs: int
    max_text_chars: int
    timeout_s: float = 30.0
    doc_stride: int = 128  # question answering: overlap of a long context's windows
    task_labels: int = 100  # adapter names with their own label on the per-task metrics


class PredictionService:
    def __init__(self, registry: AdapterRegistry, tokenizer: TextEncoder,
                 batcher: Batcher[Row], limits: PredictLimits) -> None:
        self.registry = registry
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.limits = limits
        self._labelled: set[str] = set()

    async def predict(self, task: str, inputs: list[TextInput], version: int | None = None,
                      options: DecodeOptions | None = None) -> tuple[int, list[Prediction]]:
        """(version served, one prediction per input)."""
        t0 = time.perf_counter()
        version, predictions = await self._predict(task, inputs, version,
                                                   options or DecodeOptions())
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
                       options: DecodeOptions) -> tuple[int, list[Prediction]]:
        self._check(inputs)
        key = self.registry.resolve(name, version)
        task = get_task(self.registry.metadata(key).task_type)
        for n, item in enumerate(inputs):
            task.check_input(n, item, name)
        loading = self.registry.prefetch(key)  # not on the device: the loader fetches it now
        features = await asyncio.to_thread(task.tokenize, self.tokenizer, inputs,
                                           self.limits.doc_stride)
        try:
            rows = await asyncio.wait_for(self._submit(key, features, options, loading),
                                          self.limits.timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no answer within {self.limits.timeout_s:g} s (REQUEST_TIMEOUT_S); the service is "
                f"overloaded or the request too large") from None
        return key[1], task.merge(features, rows, len(inputs), options)

    async def _submit(self, key: Key, features: list[Feature], options: DecodeOptions,
                      loading: Future[None] | None) -> list[Prediction]:
        """Queue the rows once their adapter is in memory: a batch never waits for a disk read."""
        if loading is not None:  # shared by every request for this adapter: never cancelled
            await asyncio.shield(asyncio.wrap_future(loading))
        return await self.batcher.submit([Row(key, f, options) for f in features])

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

"""The training loop: a pure function of (frozen encoder, data, config) -> the best adapter + head."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from app.model.adapter import AdapterSet
from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature
from app.tasks import Head, get_task
from app.tasks.base import Examples, TrainingData
from app.training.config import TrainConfig

log = logging.getLogger(__name__)
POOL_BATCHES = 50  # batches drawn together and sorted by length: little padding, still shuffled
EVAL_BATCH_SIZE = 64


class TrainingCancelled(Exception):
    """should_stop() said so; nothing is returned and nothing must be stored."""


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    elapsed: float

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.total_steps)

    @property
    def eta_seconds(self) -> float | None:
        return self.elapsed * (1 - self.fraction) / self.fraction if self.step else None


@dataclass
class TrainResult:
    adapter: AdapterSet
    head: Head
    history: list[dict[str, Any]]  # per epoch: epoch, train_loss, validation metrics
    best_epoch: int
    best_metrics: dict[str, float]
    stop_reason: str  # "completed", "early stopping", "time limit", "stopped" (on_epoch said so)
    train_seconds: float
    examples_seen: int = 0

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds else 0.0


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length rows."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    pool = batch_size * POOL_BATCHES
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.inference_mode()
def predict_outputs(encoder: FrozenEncoder, adapter: AdapterSet, head: Head,
                    features: list[Feature]) -> list[Tensor]:
    """Head outputs (probabilities, values, or per-token probabilities) per feature, in order."""
    adapter.eval()
    head.eval()
    encoder.model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]))
    outputs: dict[int, Tensor] = {}
    for start in range(0, len(order), EVAL_BATCH_SIZE):
        idx = order[start:start + EVAL_BATCH_SIZE]
        batch = encoder.tokenizer.collate([features[i] for i in idx]).to(encoder.device)
        out = head.predict(encoder.forward(batch, adapter), batch.attention_mask).float().cpu()
        outputs.update(zip(idx, out, strict=True))
    return [outputs[i] for i in range(len(features))]


def evaluate(encoder: FrozenEncoder, adapter: AdapterSet, head: Head, features: list[Feature],
             examples: Examples, task_type: str, labels: list[str]) -> dict[str, float]:
    """The task type's validation metrics of this adapter + head on tokenized examples."""
    outputs = predict_outputs(encoder, adapter, head, features)
    return get_task(task_type).evaluate(head, outputs, features, examples, labels)


def _optimizer(adapter: AdapterSet, head: Head, config: TrainConfig, total_steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    assert config.learning_rate is not None, "not resolved"
    groups = []
    for module, lr in ((adapter, config.learning_rate),
                       (head, config.learning_rate * config.head_lr_multiplier)):
        named = list(module.named_parameters())
        groups += [
            {"params": [p for n, p in named if not n.endswith("bias")], "lr": lr,
             "weight_decay": config.weight_decay},
            {"params": [p for n, p in named if n.endswith("bias")], "lr": lr, "weight_decay": 0.0},
        ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    warmup = max(1, int(total_steps * config.warmup_ratio))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_adapter(encoder: FrozenEncoder, data: TrainingData, config: TrainConfig,
                  on_progress: Callable[[Progress], None] | None = None,
                  on_epoch: Callable[[dict[str, Any]], bool | None] | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  clock: Callable[[], float] = time.perf_counter,
                  select: Examples | None = None) -> TrainResult:
    """Fit a fresh adapter + head on data.train, keep the epoch best on data.validation.

    `on_epoch` gets each epoch's record; returning True ends training after that epoch (stop
    reason "stopped": a search's budget). `clock` (seconds) times it and enforces
    max_train_seconds; a search passes its own. `select`: other rows that pick the kept epoch
    (its metrics go into each record under "selection"), while data.validation still scores
    the epochs and stops early: a search judges trials on one part of a user's validation
    rows and keeps each trial's epoch by the other, so neither choice sees the other's rows.
    """
    config = config.resolved(data.task_type)
    torch.manual_seed(config.seed)
    trainer = _Trainer(encoder, data, config, on_progress, on_epoch, should_stop, clock, select)
    try:
        return trainer.fit()
    finally:
        encoder.model.eval()


class _Trainer:
    """The state of one training run; fit() is the loop."""

    def __init__(self, encoder: FrozenEncoder, data: TrainingData, config: TrainConfig,
                 on_progress: Callable[[Progress], None] | None,
                 on_epoch: Callable[[dict[str, Any]], bool | None] | None,
                 should_stop: Callable[[], bool] | None, clock: Callable[[], float],
                 select: Examples | None = None) -> None:
        self.encoder, self.data, self.config, self.clock = encoder, data, config, clock
        self.select = select
        self.on_progress, self.on_epoch, self.should_stop = on_progress, on_epoch, should_stop
        self.rng = random.Random(config.seed)
        self.task = get_task(data.task_type)
        info = encoder.info
        self.adapter = AdapterSet(config.adapter_config(), info.dims)
        self.head = self.task.build_head(config.head_config(data.task_type, data.labels),
                                         info.hidden_size)
        self.adapter.to(encoder.device)
        self.head.to(encoder.device)
        assert config.epochs and config.learning_rate and config.max_seq_length, "not resolved"
        self.epochs, length = config.epochs, config.max_seq_length
        self.train_feats, self.targets = self.task.encode(encoder.tokenizer, data.train, length,
                                                          config.doc_stride)
        self.val_feats, _ = self.task.encode(encoder.tokenizer, data.validation, length,
                                             config.doc_stride)
        self.select_feats = None if select is None else self.task.encode(
            encoder.tokenizer, select, length, config.doc_stride)[0]
        self.total_steps = math.ceil(len(self.train_feats) / config.batch_size) * self.epochs
        self.optimizer, self.scheduler = _optimizer(self.adapter, self.head, config,
                                                    self.total_steps)
        self.step = self.seen = 0
        self.start = clock()

    def fit(self) -> TrainResult:
        history: list[dict[str, Any]] = []
        best: tuple[tuple[float, float], int, dict[str, Tensor], dict[str, Tensor]] | None = None
        judged: tuple[float, float] | None = None  # data.validation's best: early stopping
        stop_reason, stale = "completed", 0
        for epoch in range(1, self.epochs + 1):
            losses, timed_out = self._epoch(epoch)
            metrics = self._evaluate(self.val_feats, self.data.validation)
            record: dict[str, Any] = {"epoch": epoch,
                                      "train_loss": sum(losses) / max(1, len(losses)), **metrics}
            picked_by = metrics
            if self.select is not None:
                assert self.select_feats is not None
                picked_by = record["selection"] = self._evaluate(self.select_feats, self.select)
            history.append(record)
            stop = self.on_epoch is not None and self.on_epoch(record) is True
            log.info("epoch %d: %s", epoch, record)
            score = self.task.score(metrics)
            if judged is None or score > judged:
                judged, stale = score, 0
            else:
                stale += 1
            kept_score = self.task.score(picked_by)
            if best is None or kept_score > best[0]:
                best = (kept_score, epoch, _copy(self.adapter), _copy(self.head))
            if timed_out:
                stop_reason = "time limit"
                break
            if stop and epoch < self.epochs:
                stop_reason = "stopped"
                break
            if stale >= self.config.patience and epoch < self.epochs:
                stop_reason = "early stopping"
                break
        assert best is not None
        self.adapter.load_state_dict(best[2])
        self.head.load_state_dict(best[3])
        self.adapter.eval()
        self.head.eval()
        kept = history[best[1] - 1]
        if self.select is not None:  # the metrics of the rows that picked it
            kept = {k: v for k, v in kept.items() if k in ("epoch", "train_loss")} \
                | kept["selection"]
        return TrainResult(self.adapter, self.head, history, best[1], kept,
                           stop_reason, self.clock() - self.start, self.seen)

    def _evaluate(self, features: list[Feature], examples: Examples) -> dict[str, float]:
        return evaluate(self.encoder, self.adapter, self.head, features, examples,
                        self.data.task_type, self.data.labels)

    def _epoch(self, epoch: int) -> tuple[list[float], bool]:
        """One pass over the training data; returns the losses and whether time ran out."""
        cfg, enc = self.config, self.encoder
        self.adapter.train()
        self.head.train()
        # Dropout inside the frozen base regularises the adapter (its weights never change).
        enc.model.train(cfg.base_dropout)
        losses: list[float] = []
        for idx in length_batches([len(f) for f in self.train_feats], cfg.batch_size, self.rng):
            if self.should_stop is not None and self.should_stop():
                raise TrainingCancelled()
            batch = enc.tokenizer.collate([self.train_feats[i] for i in idx]).to(enc.device)
            outputs = self.head(enc.forward(batch, self.adapter), batch.attention_mask)
            targets = self.task.collate_targets([self.targets[i] for i in idx],
                                                batch.input_ids.shape[1])
            loss = self.head.loss(outputs, targets.to(enc.device), cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*self.adapter.parameters(), *self.head.parameters()],
                                           cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.seen += len(idx)
            losses.append(loss.detach().item())
            elapsed = self.clock() - self.start
            if self.on_progress is not None:
                self.on_progress(Progress(epoch, self.epochs, self.step, self.total_steps,
                                          losses[-1], elapsed))
            if cfg.max_train_seconds and elapsed > cfg.max_train_seconds:
                return losses, True
        return losses, False


def _copy(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

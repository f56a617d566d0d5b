"""Automatic adapter design: an Optuna search over designs and optimisation inside one job."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from app.model.cost import adapter_parameters, relative_cost
from app.model.encoder import FrozenEncoder
from app.tasks import get_task
from app.tasks.base import TrainingData
from app.training.choice import Choice, TrialRecord, choose, pareto_front, ranking
from app.training.config import SearchConfig, TrainConfig
from app.training.loop import Progress, TrainingCancelled, TrainResult, train_adapter
from app.training.search_rows import SELECTION_HALF, search_split
from app.training.space import Space, drawn_params, resolve_space, searched_fields, start_params, suggest

log = logging.getLogger(__name__)
Clock = Callable[[], float]
PRUNER_STARTUP_TRIALS = 2
FINAL = "retrained on all training rows with the winner's config; its best epoch picked on " \
    "the job's validation split, which no trial saw"
KEPT = "the winning trial as it was: trained on all training rows, its epoch picked on " \
    + SELECTION_HALF


def search_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A stored search in a few fields: what a finished job reports."""
    states = [t["state"] for t in record["trials"]]
    return {"winner": record["winner"], "why": record["why"], "trials": len(states),
            **{s: states.count(s) for s in ("complete", "pruned", "failed")},
            "stop_reason": record["stop_reason"], "cancelled": record["cancelled"],
            "elapsed_seconds": record["elapsed_seconds"]}


def _finite(score: float) -> float:
    """A diverged trial's NaN score as the worst one (Optuna refuses NaN)."""
    return score if math.isfinite(score) else -1e9


class _Pruned(Exception):
    """The pruner ended a trial: its per-epoch score trails the others' at the same epoch."""


@dataclass
class SearchOutcome:
    result: TrainResult  # the model to store
    config: TrainConfig  # the config that trained it
    record: dict[str, Any]  # the search, for the stored metadata
    kept_on_cancel: bool = False  # cancelled, and the best finished trial is stored
    validation_examples: int | None = None  # rows result.best_metrics was measured on


@dataclass
class _Budget:
    """Seconds left, and what the next epoch and the final training are expected to take."""

    total: float
    clock: Clock
    start: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)  # each trial epoch's, with its eval
    final_scale: float = 1.0  # full training rows over the search's training rows

    def elapsed(self) -> float:
        return self.clock() - self.start

    def per_epoch(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else 0.0

    def final_reserve(self, epochs: int) -> float:
        return self.per_epoch() * self.final_scale * epochs

    def fits(self, epochs: int, final_epochs: int) -> bool:
        """Whether `epochs` more epochs of a trial and then the final training fit."""
        need = self.per_epoch() * epochs + self.final_reserve(final_epochs)
        return self.elapsed() + need <= self.total


def search_and_train(encoder: FrozenEncoder, data: TrainingData, config: TrainConfig,
                     on_progress: Callable[[Progress], None] | None = None,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     on_search: Callable[[dict[str, Any]], None] | None = None,
                     clock: Clock = time.monotonic) -> SearchOutcome:
    """Search config.search.space on a split of data.train, then retrain the winner on all of
    data.train (its best epoch on data.validation) within config.search.budget_s."""
    assert config.search is not None
    return _Search(encoder, data, config.resolved(data.task_type), config.search, on_progress,
                   on_epoch, should_stop, on_search, clock).run()


class _Search:
    """The state of one search; run() is the loop."""

    def __init__(self, encoder: FrozenEncoder, data: TrainingData, config: TrainConfig,
                 search: SearchConfig, on_progress: Callable[[Progress], None] | None,
                 on_epoch: Callable[[dict[str, Any]], None] | None,
                 should_stop: Callable[[], bool] | None,
                 on_search: Callable[[dict[str, Any]], None] | None, clock: Clock) -> None:
        self.encoder, self.data, self.base, self.search = encoder, data, config, search
        self.on_progress, self.on_epoch, self.should_stop = on_progress, on_epoch, should_stop
        self.on_search = on_search
        self.task = get_task(data.task_type)
        self.seed = config.seed if search.seed is None else search.seed
        self.space: Space = resolve_space(data.task_type, search.space)
        self.splits = search_split(data, config)
        self.split = self.splits.trials
        # no final training when the winner is kept; else it trains on all training rows
        final_scale = 0.0 if self.splits.keeps_winner \
            else len(data.train) / max(1, len(self.split.train))
        self.budget = _Budget(search.budget_s, clock, clock(), final_scale=final_scale)
        self.trials: list[TrialRecord] = []
        self.best: tuple[TrialRecord, TrainResult, TrainConfig] | None = None
        # when the winner is kept: the models of the trials that may still win
        self.kept: dict[int, tuple[TrainResult, TrainConfig]] = {}
        self.configs: dict[int, TrainConfig] = {}
        self.steps = 0  # training steps over all trials: the job's loss curve runs on
        self.stop_reason = "trials done"
        self.start_trial: int | None = None  # the starting recipe's trial, when the space holds it
        self.final_phase = False  # the winner's final training runs

    # -------------------------------------------------------------------------------- run
    def run(self) -> SearchOutcome:
        import optuna  # a second of imports: paid by a search, not by the server's start

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        n = self.search.trials
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed,
                                               n_startup_trials=min(10, max(3, n // 3))),
            # From its second epoch on, a trial stops when its best score so far is below the
            # median of the earlier trials' at that epoch; the first two always finish. Not at
            # epoch 1: a slower learning rate or a longer schedule starts lower and ends higher.
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=2))
        start = start_params(self.space, self.base)
        if start:
            study.enqueue_trial(start)
            self.start_trial = 0 if set(start) >= drawn_params(self.space, start["design"]) \
                else None  # only part of the recipe fits the space: trial 0 is not it
        self._report()
        try:
            for _ in range(n):
                if self.trials and not self.budget.fits(1, self._final_epochs()):
                    self.stop_reason = "budget"
                    break
                self._trial(study, optuna)
            return self._finish()
        except TrainingCancelled:
            if not (self.search.keep_best_on_cancel and self.best is not None):
                raise
            self.stop_reason = "cancelled"
            return self._keep_best()

    def _trial(self, study: Any, optuna: Any) -> None:
        trial = study.ask()
        config = self.configs[trial.number] = suggest(trial, self.space, self.base)
        dims = self.encoder.info.dims
        head = self.task.build_head(config.head_config(self.data.task_type, self.data.labels),
                                    self.encoder.info.hidden_size)
        record = TrialRecord(
            number=trial.number, params=dict(trial.params), config=searched_fields(config),
            trainable_parameters=adapter_parameters(config.adapter_config(), dims)
            + sum(p.numel() for p in head.parameters()),
            relative_cost=round(relative_cost(config.adapter_config(), dims), 5))
        self.trials.append(record)
        self._report()
        started = self.budget.clock()
        last_epoch = [started]

        def epoch_done(metrics: dict[str, Any]) -> bool:
            now = self.budget.clock()
            self.budget.epoch_seconds.append(now - last_epoch[0])
            last_epoch[0] = now
            epoch = metrics["epoch"]
            score = _finite(self.task.score(metrics)[0])
            record.curve.append(round(score, 5))
            if self.on_epoch is not None:
                self.on_epoch({"trial": trial.number, **metrics})
            trial.report(score, epoch)
            if epoch < config.epochs and trial.should_prune():
                raise _Pruned()
            if epoch < config.epochs and not self.budget.fits(1, self._final_epochs()):
                record.stopped_by = "budget"  # its model so far is a result: it counts
                return True
            return False

        try:
            result = train_adapter(self.encoder, self.split, config, self._progress, epoch_done,
                                   self.should_stop, self.budget.clock, self.splits.select)
        except _Pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            record.state = "pruned"
        except TrainingCancelled:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            record.state = "cancelled"
            raise
        except Exception as exc:  # one bad config must not end the search
            log.exception("search trial %d failed", trial.number)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            record.state, record.error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            if record.stopped_by == "budget":  # retrained, it gets the epochs it had here
                ran = len(result.history)
                config = self.configs[trial.number] = config.model_copy(update={"epochs": ran})
                record.config["epochs"] = ran
            judged = self._judged(result)
            score, tiebreak = map(_finite, self.task.score(judged))
            study.tell(trial, score)
            record.state, record.score, record.tiebreak = "complete", score, tiebreak
            record.metrics = {k: v for k, v in judged.items() if k != "selection"}
            record.best_epoch = judged["epoch"]
            if self.best is None or (score, tiebreak) > (self.best[0].score, self.best[0].tiebreak):
                self.best = (record, result, config)
            if self.splits.keeps_winner:
                self._keep(trial.number, result, config)
        finally:
            record.seconds = round(self.budget.clock() - started, 3)
            self._report()

    def _judged(self, result: TrainResult) -> dict[str, Any]:
        """The trial's epoch record with the best score on the rows that judge trials (with
        `select`, the kept epoch may be another one)."""
        if self.splits.select is None:
            return result.best_metrics
        return max(result.history, key=lambda r: tuple(map(_finite, self.task.score(r))))

    def _keep(self, number: int, result: TrainResult, config: TrainConfig) -> None:
        """Hold this trial's model, and drop those that can no longer win: `choose` picks the
        best, the starting recipe or a trial on the Pareto front of score against cost, and a
        trial that is none of these now never becomes one."""
        self.kept[number] = (result, config)
        done = [t for t in self.trials if t.state == "complete"]
        may_win = {t.number for t in pareto_front(done)} | {self.start_trial} \
            | {max(done, key=ranking).number}
        self.kept = {n: kept for n, kept in self.kept.items() if n in may_win}

    def _progress(self, p: Progress) -> None:
        """The job's progress is the search's: steps over all trials so far, the search's
        seconds, and a total that makes the fraction the share of its expected seconds gone
        (so it grows across trials, and is never behind the budget's clock)."""
        self.steps += 1
        if self.on_progress is None:
            return
        elapsed = self.budget.elapsed()
        left = self._seconds_left(p)
        total = self.steps if elapsed <= 0 or left <= 0 \
            else max(self.steps, math.ceil(self.steps * (elapsed + left) / elapsed))
        self.on_progress(replace(p, step=self.steps, total_steps=total, elapsed=elapsed))

    def _seconds_left(self, p: Progress) -> float:
        """Expected seconds until the search ends: the running training's rest at its own pace,
        and, during the trials, the trials not started yet (at the finished ones' mean) and the
        final training; at most what the budget has left."""
        left = p.eta_seconds or 0.0
        if not self.final_phase:
            ended = [t.seconds for t in self.trials if t.state != "running"]
            per_trial = sum(ended) / len(ended) if ended else p.elapsed + left
            left += per_trial * (self.search.trials - len(self.trials)) \
                + self.budget.final_reserve(self._final_epochs())
        return max(0.0, min(left, self.search.budget_s - self.budget.elapsed()))

    def _final_epochs(self) -> int:
        best = self.best[2].epochs if self.best is not None else self.base.epochs
        assert best is not None
        return best

    # ----------------------------------------------------------------------------- finish
    def _finish(self) -> SearchOutcome:
        n_val = len(self.split.validation)
        choice = choose(self.trials, self.search.objective,
                        lambda s: self.task.standard_error(s, n_val), self.start_trial)
        if choice.winner is not None and choice.winner in self.kept:
            result, config = self.kept[choice.winner]
            self._report(choice)
            return SearchOutcome(result, config.model_copy(update={"search": None}),
                                 self._record(choice, KEPT),
                                 validation_examples=self._select_rows())
        config = self.base if choice.winner is None else self.configs[choice.winner]
        config = config.model_copy(update={"search": None, "max_train_seconds": max(
            1e-3, self.search.budget_s - self.budget.elapsed())})
        self._report(choice)
        self.final_phase = True
        on_epoch = self.on_epoch
        result = train_adapter(
            self.encoder, self.data, config, self._progress,
            None if on_epoch is None else lambda r: on_epoch({"trial": "final", **r}),
            self.should_stop, self.budget.clock)
        return SearchOutcome(result, config.model_copy(update={"max_train_seconds": None}),
                             self._record(choice, FINAL))

    def _keep_best(self) -> SearchOutcome:
        assert self.best is not None
        record, result, config = self.best
        choice = Choice(record.number, "search cancelled: kept the best finished trial "
                        f"(trial {record.number}, score {record.score:.4f})")
        kept = "the best finished trial as it was (search cancelled): trained on the search's " \
            "training rows, its epoch picked on " + (
                SELECTION_HALF if self.splits.keeps_winner else "the search's validation rows")
        return SearchOutcome(result, config.model_copy(update={"search": None}),
                             self._record(choice, kept), kept_on_cancel=True,
                             validation_examples=self._select_rows()
                             or len(self.split.validation))

    def _select_rows(self) -> int | None:
        return None if self.splits.select is None else len(self.splits.select)

    # ---------------------------------------------------------------------------- records
    def _table(self) -> dict[str, Any]:
        return {"phase": "trials", "trials_requested": self.search.trials,
                "budget_s": self.search.budget_s,
                "objective": self.search.objective,
                "elapsed_seconds": round(self.budget.elapsed(), 3),
                "trials": [t.as_dict() for t in self.trials]}

    def _report(self, choice: Choice | None = None) -> None:
        if self.on_search is not None:
            table = self._table()
            if choice is not None:
                table |= {"winner": choice.winner, "why": choice.why, "phase": "final training"}
            self.on_search(table)

    def _record(self, choice: Choice, final: str) -> dict[str, Any]:
        """The whole search, for the stored metadata (and the job's last table)."""
        table = self._table()
        record = {**table, "phase": "done", "seed": self.seed, "space": self.space.as_dict(),
                  "sampler": "TPE", "pruner": "median (from epoch 2, after "
                  f"{PRUNER_STARTUP_TRIALS} trials)",
                  "splits": {"search_train_rows": len(self.split.train),
                             "search_validation_rows": len(self.split.validation),
                             "judged_on": self.splits.judged_on,
                             **({"selection_rows": len(self.splits.select)}
                                if self.splits.select is not None else {}),
                             "final": final},
                  "stop_reason": self.stop_reason, "winner": choice.winner, "why": choice.why,
                  "pareto_front": choice.pareto, "standard_error": choice.standard_error,
                  "cancelled": self.stop_reason == "cancelled"}
        if self.on_search is not None:
            self.on_search(record)
        return record

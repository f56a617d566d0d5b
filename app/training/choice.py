"""A search's trials table, and how the winner is chosen from it (quality, or balanced)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

REPLACE_Z = 1.645  # one-sided 95%: a trial replaces the starting recipe only by a clear lead
TrialState = Literal["running", "complete", "pruned", "failed", "cancelled"]


@dataclass
class TrialRecord:
    """One row of the trials table."""

    number: int
    params: dict[str, Any]  # what the sampler drew
    config: dict[str, Any]  # the fields of the trial's config that the search varies
    trainable_parameters: int  # adapter + head
    relative_cost: float  # predicted forward cost over the bare base (app/model/cost.py)
    state: TrialState = "running"
    score: float | None = None  # the task type's score on the search's validation rows
    tiebreak: float | None = None  # its second number (Task.score)
    metrics: dict[str, float] = field(default_factory=dict)  # at its best epoch
    best_epoch: int | None = None
    curve: list[float] = field(default_factory=list)  # the score after each epoch
    stopped_by: str | None = None  # "budget": finished early, at the epochs that fitted
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Choice:
    winner: int | None  # trial number; None: no trial finished
    why: str
    pareto: list[int] = field(default_factory=list)  # trial numbers on the quality/cost front
    standard_error: float | None = None  # of the best score


def _cost(t: TrialRecord) -> tuple[float, int]:
    return t.relative_cost, t.trainable_parameters


def ranking(t: TrialRecord) -> tuple[float, float, list[float]]:
    """The best trial has the highest: score, then its tiebreak, then the lower cost."""
    return t.score or 0.0, t.tiebreak or 0.0, [-c for c in _cost(t)]


def pareto_front(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Complete trials no other beats on both score and cost."""
    def dominated(t: TrialRecord) -> bool:
        return any(u.score is not None and t.score is not None and u.score >= t.score
                   and _cost(u) <= _cost(t) and (u.score > t.score or _cost(u) < _cost(t))
                   for u in trials)
    return sorted((t for t in trials if not dominated(t)), key=_cost)


def choose(trials: list[TrialRecord], objective: Literal["quality", "balanced"],
           standard_error: Callable[[float], float], start: int | None = None) -> Choice:
    """quality: the best score (ties: the cheaper), unless `start` (the starting recipe's
    trial) finished and the best leads it by no more than REPLACE_Z standard errors of their
    difference: the best of several noisy scores is overrated (the winner's curse), and the
    starting recipe is the one known to work across data sets. balanced: the cheapest trial
    (relative cost, then parameters) whose score is within one standard error of the best
    score: a difference smaller than that is not one the search's validation rows can tell
    apart."""
    done = [t for t in trials if t.state == "complete" and t.score is not None]
    if not done:
        return Choice(None, "no trial finished within the budget: the starting config was "
                      "trained instead")
    best = max(done, key=ranking)
    assert best.score is not None
    se = standard_error(best.score)
    front = [t.number for t in pareto_front(done)]
    if objective == "quality":
        why = f"highest validation score {best.score:.4f} of {len(done)} finished trials"
        first = next((t for t in done if t.number == start and t is not best), None)
        if first is not None and first.score is not None:
            lead = best.score - first.score
            margin = REPLACE_Z * math.hypot(se, standard_error(first.score))
            if lead <= margin:
                return Choice(first.number, f"kept the starting recipe (trial {first.number}, "
                              f"score {first.score:.4f}): the best, trial {best.number} at "
                              f"{best.score:.4f}, leads it by {lead:.4f}, not more than the "
                              f"{margin:.4f} that noise can give ({REPLACE_Z} standard errors "
                              f"of a difference)", front, round(se, 5))
            why += f", {lead:.4f} over the starting recipe (noise: up to {margin:.4f})"
        return Choice(best.number, why, front, round(se, 5))
    near = [t for t in done if t.score is not None and t.score >= best.score - se]
    pick = min(near, key=lambda t: (*_cost(t), -(t.score or 0.0)))
    why = (f"cheapest of the {len(near)} trials within one standard error ({se:.4f}) of the best "
           f"score {best.score:.4f} (trial {best.number}): score {pick.score:.4f}, cost "
           f"{pick.relative_cost:.4f}x the base, {pick.trainable_parameters} parameters")
    return Choice(pick.number, why, front, round(se, 5))

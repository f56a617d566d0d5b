"""The rows of a search: which its trials train on, which judge them, and which pick their
epochs (never the rows that judged)."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import InvalidInputError
from app.tasks import get_task
from app.tasks.base import Examples, TrainingData
from app.training.config import TrainConfig
from app.training.data import split

SPLIT_SEED_OFFSET = 1  # the search's split differs from the job's own validation split
MIN_SEARCH_ROWS = 4
SELECTION_HALF = "the half of the given validation rows that judged no trial"


@dataclass(frozen=True)
class Splits:
    """Where trials train and what judges them; `select`, when the user sent validation rows:
    the half of them that picks each trial's kept epoch, and then the winner is stored as it
    was (no final training)."""

    trials: TrainingData  # trials train on .train and are judged on .validation
    select: Examples | None
    judged_on: str  # for the record: which rows judged the trials, and why

    @property
    def keeps_winner(self) -> bool:
        return self.select is not None


def search_split(data: TrainingData, config: TrainConfig) -> Splits:
    """The rows that judge trials, never those that pick the final model's epoch.

    Validation rows sent with the job are split in half (stratified, seeded): they are the
    rows like the ones the adapter will see, so one half judges the trials (which train on all
    training rows) and the other picks each trial's epoch. Without them (or with fewer than
    MIN_SEARCH_ROWS), data.train is split again: trials train on one part and are judged on the
    other, and data.validation stays unseen until the winner's final training."""
    assert config.search is not None
    seed = config.seed if config.search.seed is None else config.search.seed
    task = get_task(data.task_type)
    if data.validation_given and len(data.validation) >= MIN_SEARCH_ROWS:
        judge_idx, select_idx = split(task.strata(data.validation.targets), 0.5,
                                      seed + SPLIT_SEED_OFFSET)
        return Splits(TrainingData(data.task_type, data.labels, data.train,
                                   data.validation.subset(judge_idx), True),
                      data.validation.subset(select_idx),
                      "half of the given validation rows")
    strata = task.strata(data.train.targets)
    if len(strata) < MIN_SEARCH_ROWS:
        raise InvalidInputError(
            f"config.search needs at least {MIN_SEARCH_ROWS} training rows besides the "
            f"validation ones, to judge trials on some of them; there are {len(strata)}"
            + (f" (or at least {MIN_SEARCH_ROWS} validation rows to judge them on; "
               f"{len(data.validation)} were sent)" if data.validation_given else ""))
    train_idx, val_idx = split(strata, config.search.search_fraction, seed + SPLIT_SEED_OFFSET)
    judged_on = f"a held-out {config.search.search_fraction:g} of the training rows"
    if data.validation_given:
        judged_on += f" (the {len(data.validation)} validation rows sent are too few to halve)"
    return Splits(TrainingData(data.task_type, data.labels, data.train.subset(train_idx),
                               data.train.subset(val_idx), False), None, judged_on)

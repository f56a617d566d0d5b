"""The search space of an adapter search: its default per task type, and one trial's config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from app.tasks import HeadConfig, get_task
from app.training.config import DESIGNS, Design, SearchSpace, TrainConfig

if TYPE_CHECKING:  # optuna loads only when a search runs
    import optuna

REDUCTION_FACTORS = (2.0, 4.0, 8.0, 16.0, 32.0)  # MiniLM (H 384): bottlenecks 192 ... 12
LORA_RANKS = (4, 8, 16, 32)
HEAD_LAYERS = (1, 2)
LR_SPREAD = 4.0  # the default learning-rate range: the task type's default / 4 ... * 4


@dataclass(frozen=True)
class Space:
    """Every choice a search has (resolved: no field left to a default)."""

    designs: tuple[Design, ...]
    reduction_factors: tuple[float, ...]
    lora_ranks: tuple[int, ...]
    learning_rate: tuple[float, float]  # log-uniform
    epochs: tuple[int, int]
    head_layers: tuple[int, ...]  # empty: the task type's head has one depth only
    default_head_layers: int  # the task type's depth when config.head_layers is None

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def resolve_space(task_type: str, override: SearchSpace | None = None) -> Space:
    """The task-aware default space, with the request's own choices put in its place.

    Learning rate and epochs centre on the task type's TaskDefaults, so a task type that needed
    a larger rate or more epochs (token classification, question answering) is searched around
    its own values without a list of task names here.
    """
    d = get_task(task_type).defaults
    o = override or SearchSpace()
    return Space(
        designs=tuple(o.designs or DESIGNS),
        reduction_factors=tuple(o.reduction_factors or REDUCTION_FACTORS),
        lora_ranks=tuple(o.lora_ranks or LORA_RANKS),
        learning_rate=tuple(o.learning_rate or (d.learning_rate / LR_SPREAD,  # type: ignore[arg-type]
                                                min(1.0, d.learning_rate * LR_SPREAD))),
        epochs=tuple(o.epochs or (max(1, d.epochs - 1), 2 * d.epochs)),  # type: ignore[arg-type]
        head_layers=tuple(o.head_layers or (HEAD_LAYERS if _depth(task_type, 1) != _depth(
            task_type, 2) else ())),
        default_head_layers=_depth(task_type, None))


def _depth(task_type: str, layers: int | None) -> int:
    """Linear layers of the task type's head built with `layers` (None: its default)."""
    task = get_task(task_type)
    head = task.build_head(  # a small head: only its shape is read
        HeadConfig(task_type=task.name, labels=["O", "B-X"], layers=layers), 8)
    return sum(isinstance(m, nn.Linear) for m in head.modules())


def start_params(space: Space, config: TrainConfig) -> dict[str, Any]:
    """The resolved starting config as trial parameters, those the space can hold: the first
    trial, so a search always measures the recipe it would otherwise have trained."""
    design = "lora" if config.method == "lora" else config.placement
    params: dict[str, Any] = {"design": design, "learning_rate": config.learning_rate,
                              "epochs": config.epochs,
                              "head_layers": config.head_layers or space.default_head_layers}
    if design == "lora":
        params["lora_r"] = config.r
    elif config.bottleneck_size is None:
        params["reduction_factor"] = config.reduction_factor
    lr, ep = space.learning_rate, space.epochs
    fits = {"design": design in space.designs,
            "learning_rate": lr[0] <= (config.learning_rate or 0) <= lr[1],
            "epochs": ep[0] <= (config.epochs or 0) <= ep[1],
            "head_layers": params["head_layers"] in space.head_layers,
            "lora_r": config.r in space.lora_ranks,
            "reduction_factor": config.reduction_factor in space.reduction_factors}
    return {k: v for k, v in params.items() if fits[k]} if fits["design"] else {}


def drawn_params(space: Space, design: str) -> set[str]:
    """The parameters a trial of this design draws from the space (see suggest)."""
    return {"design", "learning_rate", "epochs", "lora_r" if design == "lora" else
            "reduction_factor"} | ({"head_layers"} if space.head_layers else set())


def suggest(trial: optuna.trial.Trial, space: Space, base: TrainConfig) -> TrainConfig:
    """The trial's config: `base` (resolved) with the searched fields drawn from the space."""
    design = str(trial.suggest_categorical("design", list(space.designs)))
    update: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        "epochs": trial.suggest_int("epochs", *space.epochs),
        "search": None,
    }
    if space.head_layers:
        update["head_layers"] = trial.suggest_categorical("head_layers", list(space.head_layers))
    if design == "lora":
        r = trial.suggest_categorical("lora_r", list(space.lora_ranks))
        update |= {"method": "lora", "r": r, "alpha": 2.0 * r}
    else:
        update |= {"method": "bottleneck", "placement": design, "bottleneck_size": None,
                   "reduction_factor": trial.suggest_categorical(
                       "reduction_factor", list(space.reduction_factors))}
    return TrainConfig(**{**base.model_dump(), **update})  # validated again


def searched_fields(config: TrainConfig) -> dict[str, Any]:
    """What a trial varied, as recorded in the trials table."""
    fields = ["method", "learning_rate", "epochs", "head_layers"]
    fields += ["r", "alpha"] if config.method == "lora" else ["placement", "reduction_factor"]
    return {f: getattr(config, f) for f in fields}

"""What any search over the space could reach on SST-2: configs scored after every epoch.

    python -m bench.bench_search_ceiling --data ../shared/data [--rows 4000] [--seed 0]
                                         [--configs '[{}, {"epochs": 6}]'] [--threads 2]

The same training rows as bench_search's default recipe (`--rows` seeded rows of
sst2/train.jsonl, its 10% validation split held out), each config (a TrainConfig, no early
stopping) trained once; after every epoch its accuracy on the validation split, on all of
sst2/dev.jsonl (whole sentences) and on `--phrases` (1,500) training phrases outside the sample
(rows like the training rows). If no config reaches a dev score at any epoch, no search over
those configs can. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature
from app.tasks import get_task
from app.tasks.base import Examples, TrainingData
from app.training import loop
from app.training.config import TrainConfig
from app.training.data import prepare
from bench.common import DEFAULT_DATA_DIR, emit, log, machine_info, read_jsonl, setup_logging

DEFAULT_CONFIGS = [
    {}, {"epochs": 6}, {"learning_rate": 4e-4, "epochs": 4}, {"reduction_factor": 32, "epochs": 4},
    {"placement": "houlsby", "reduction_factor": 4, "learning_rate": 1.13e-3, "epochs": 4},
    {"reduction_factor": 2, "learning_rate": 2e-3, "epochs": 6},
    {"method": "lora", "r": 16, "alpha": 32, "learning_rate": 2e-3, "epochs": 6},
]


def _examples(encoder: FrozenEncoder, data: TrainingData, rows: list[dict[str, Any]]
              ) -> tuple[list[Feature], Examples]:
    examples = prepare("classification", rows, rows, data.labels, 0.1, 0, 10**7,
                       10**6).validation
    features, _ = get_task("classification").encode(encoder.tokenizer, examples, 128, 128)
    return features, examples


def run_config(encoder: FrozenEncoder, data: TrainingData,
               sets: dict[str, tuple[list[Feature], Examples]], config: dict[str, Any],
               seed: int) -> dict[str, Any]:
    """Train one config; its accuracy on the validation split and on each set, per epoch."""
    curves: dict[str, list[float]] = {"validation": [], **{k: [] for k in sets}}
    original = loop.evaluate

    def evaluate(encoder: FrozenEncoder, adapter: Any, head: Any, *rest: Any
                 ) -> dict[str, float]:  # every epoch's model, on the two extra sets too
        for name, (features, examples) in sets.items():
            curves[name].append(round(original(encoder, adapter, head, features, examples,
                                               "classification", data.labels)["accuracy"], 4))
        return original(encoder, adapter, head, *rest)

    t0 = time.perf_counter()
    loop.evaluate = evaluate  # type: ignore[assignment]
    try:
        loop.train_adapter(encoder, data, TrainConfig(seed=seed, patience=100, **config),
                           on_epoch=lambda r: curves["validation"].append(
                               round(r["accuracy"], 4)))
    finally:
        loop.evaluate = original  # type: ignore[assignment]
    result = {"config": config, **curves, "best_dev": max(curves["dev"]),
              "seconds": round(time.perf_counter() - t0, 1)}
    log.info("%s", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--phrases", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=json.dumps(DEFAULT_CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    train = read_jsonl(args.data / "sst2/train.jsonl")
    rows = random.Random(args.seed).sample(train, args.rows)  # bench_search's seeded rows
    sampled = {r["text"] for r in rows}
    phrases = random.Random(5).sample([r for r in train if r["text"] not in sampled],
                                      args.phrases)
    encoder = FrozenEncoder.load("")
    data = prepare("classification", rows, None, None, 0.1, args.seed, 10**7, 10**6)
    sets = {"dev": _examples(encoder, data, read_jsonl(args.data / "sst2/dev.jsonl")),
            "unseen_phrases": _examples(encoder, data, phrases)}
    results = [run_config(encoder, data, sets, config, args.seed)
               for config in json.loads(args.configs)]
    emit({"machine": machine_info(encoder), "train_rows": len(data.train),
          "dev_rows": len(sets["dev"][1]), "configs": results,
          "best_dev": max(r["best_dev"] for r in results)})


if __name__ == "__main__":
    main()

"""NER adapter on CoNLL-2003 with the default training config: entity F1 on validation and test.

    python -m bench.bench_ner --data ../shared/data [--sample N] [--threads 2]

Trains in process (the code the worker runs) on conll2003/train.jsonl (all of it, or a seeded
sample), with validation.jsonl as the validation set that picks the stored epoch, then scores
entity-level precision/recall/F1 (CoNLL definition) on validation and test.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import torch

from app.model.encoder import FrozenEncoder
from app.tasks import get_task
from app.training.config import TrainConfig
from app.training.data import prepare
from app.training.loop import evaluate, train_adapter
from bench.common import DEFAULT_DATA_DIR, CpuMonitor, emit, log, machine_info, read_jsonl, setup_logging

TARGET_TEST_F1 = 0.80


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--sample", type=int, default=0, help="train sentences; 0 = all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config-json", default="{}", help="TrainConfig overrides")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    root = args.data / "conll2003"
    train = read_jsonl(root / "train.jsonl")
    if args.sample:
        train = random.Random(0).sample(train, args.sample)
    validation, test = read_jsonl(root / "validation.jsonl"), read_jsonl(root / "test.jsonl")
    config = TrainConfig.model_validate_json(args.config_json)
    encoder = FrozenEncoder.load("")
    data = prepare("token_classification", train, validation, None, config.validation_fraction,
                   config.seed, 10**7, 10**6)
    result: dict[str, Any] = {"machine": machine_info(encoder), "train_sentences": len(train),
                              "config": config.resolved("token_classification").model_dump()}
    t0 = time.perf_counter()
    with CpuMonitor() as mon:
        trained = train_adapter(encoder, data, config,
                                on_epoch=lambda r: log.info("epoch %s", r))
    result["training"] = {
        "wall_s": round(time.perf_counter() - t0, 1), "train_seconds": round(trained.train_seconds, 1),
        "examples_per_s": round(trained.examples_per_second, 1), "best_epoch": trained.best_epoch,
        "history": trained.history, "machine": mon.result}
    for split, rows in (("validation", validation), ("test", test)):
        examples = prepare("token_classification", rows, rows, data.labels, 0.1, 0, 10**7,
                           10**6).validation
        features, _ = get_task("token_classification").encode(
            encoder.tokenizer, examples, config.resolved("token_classification").max_seq_length,
            config.doc_stride)
        result[split] = {k: round(v, 4) for k, v in evaluate(
            encoder, trained.adapter, trained.head, features, examples, "token_classification",
            data.labels).items()}
        log.info("%s: %s", split, result[split])
    result["targets"] = {"test f1 >= 0.80": {"value": result["test"]["f1"],
                                             "met": result["test"]["f1"] >= TARGET_TEST_F1}}
    emit(result)


if __name__ == "__main__":
    main()

"""Extractive QA adapter on SQuAD v1.1 with the default training config: EM/F1 on unseen articles.

    python -m bench.bench_qa --data ../shared/data [--train-articles 38] [--test-articles 10]

squad/dev.jsonl is the only SQuAD split at hand: train on the questions of its first
`--train-articles` articles (by `title`, in file order) and evaluate exact match and F1 (the
SQuAD v1.1 definitions) on the last `--test-articles` articles, so no article is in both.
Trains in process (the code the worker runs). Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
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

TARGET_F1 = 0.55


def by_article(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    articles: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        articles.setdefault(row["title"], []).append(row)
    return list(articles.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--train-articles", type=int, default=38)
    parser.add_argument("--test-articles", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config-json", default="{}", help="TrainConfig overrides")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    articles = by_article(read_jsonl(args.data / "squad" / "dev.jsonl"))
    train = [r for a in articles[:args.train_articles] for r in a]
    test = [r for a in articles[-args.test_articles:] for r in a]
    config = TrainConfig.model_validate_json(args.config_json)
    encoder = FrozenEncoder.load("")
    data = prepare("question_answering", train, None, None, config.validation_fraction,
                   config.seed, 10**7, 10**6)
    result: dict[str, Any] = {"machine": machine_info(encoder), "train_questions": len(train),
                              "test_questions": len(test),
                              "config": config.resolved("question_answering").model_dump()}
    t0 = time.perf_counter()
    with CpuMonitor() as mon:
        trained = train_adapter(encoder, data, config, on_epoch=lambda r: log.info("epoch %s", r))
    result["training"] = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "train_seconds": round(trained.train_seconds, 1),
        "examples_per_s": round(trained.examples_per_second, 1), "best_epoch": trained.best_epoch,
        "history": trained.history, "machine": mon.result}
    examples = prepare("question_answering", test, test, None, 0.1, 0, 10**7, 10**6).validation
    length = config.resolved("question_answering").max_seq_length
    features, _ = get_task("question_answering").encode(encoder.tokenizer, examples, length,
                                                        config.doc_stride)
    t1 = time.perf_counter()
    scores = evaluate(encoder, trained.adapter, trained.head, features, examples,
                      "question_answering", [])
    result["test"] = {**{k: round(v, 4) for k, v in scores.items()}, "windows": len(features),
                      "questions_per_s": round(len(test) / (time.perf_counter() - t1), 1)}
    result["targets"] = {"test f1 >= 0.55": {"value": result["test"]["f1"],
                                             "met": result["test"]["f1"] >= TARGET_F1}}
    emit(result)


if __name__ == "__main__":
    main()

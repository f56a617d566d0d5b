"""Training through the API with default settings, and serving latency while it trains.

    python -m bench.bench_train --data ../shared/data [--rows 4000] [--full]
                                [--config-json '{"method": "lora"}']

Against a running server (uvicorn subprocess, embedded MiniLM, 2 CPU cores):
1. POST /predict latency with nothing else running (one SST-2 dev sentence a request, c=1).
2. POST /adapters with a seeded sample of `--rows` rows of sst2/train.jsonl, DEFAULT config
   (or `--config-json`, e.g. the LoRA defaults with '{"method": "lora"}');
   while it trains, the same latency measurement; then wall time (submit -> succeeded) and
   training examples/s as the job reports them.
3. Dev accuracy of the stored adapter: all 872 rows of sst2/dev.jsonl through POST /predict.
`--full` also trains on the whole training set (67k rows; long) and reports the same.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    DEFAULT_DATA_DIR,
    CpuMonitor,
    chunks,
    emit,
    log,
    percentile,
    read_jsonl,
    setup_logging,
)
from bench.server import Server

PREDICT_CHUNK = 64


def latency(client: httpx.Client, task: str, texts: list[str], seconds: float,
            stop: threading.Event | None = None) -> dict[str, Any]:
    """Sequential single-sentence predictions for `seconds` (or until `stop`)."""
    times, rng = [], random.Random(0)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        t0 = time.perf_counter()
        r = client.post(f"/predict/{task}", json={"inputs": [rng.choice(texts)]})
        r.raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return {"requests": len(times), "p50_ms": round(percentile(times, 50), 2),
            "p95_ms": round(percentile(times, 95), 2), "p99_ms": round(percentile(times, 99), 2)}


def train(client: httpx.Client, name: str, rows: list[dict[str, Any]], during: Any = None,
          config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Submit, wait for the end (calling `during()` once it runs), return the job's figures."""
    t0 = time.perf_counter()
    r = client.post("/adapters", json={"name": name, "task_type": "classification", "train": rows,
                                       "config": config or {}}, timeout=300)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    measured = None
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] == "running" and during is not None and measured is None:
            measured = during(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    wall = time.perf_counter() - t0
    if job["status"] != "succeeded":
        raise RuntimeError(f"training failed: {job['error']}")
    log.info("trained %s in %.0f s: %s", name, wall, job["result"])
    return {"wall_s": round(wall, 1), "result": job["result"], "metrics_per_epoch": job["metrics"],
            "latency_during_training": measured}


def dev_accuracy(client: httpx.Client, name: str, dev: list[dict[str, Any]]) -> float:
    correct = 0
    for part in chunks(dev, PREDICT_CHUNK):
        r = client.post(f"/predict/{name}", json={"inputs": [row["text"] for row in part]},
                        timeout=120)
        r.raise_for_status()
        correct += sum(p["label"] == row["label"]
                       for p, row in zip(r.json()["predictions"], part, strict=True))
    return correct / len(dev)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--full", action="store_true", help="also train on all of train.jsonl")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--config-json", default="{}", help="the training config (default: {})")
    args = parser.parse_args(argv)
    config = json.loads(args.config_json)
    setup_logging()
    train_rows = read_jsonl(args.data / "sst2" / "train.jsonl")
    dev = read_jsonl(args.data / "sst2" / "dev.jsonl")
    sample = random.Random(args.seed).sample(train_rows, args.rows)
    texts = [row["text"] for row in dev]
    result: dict[str, Any] = {"rows": args.rows, "seed": args.seed, "config": config}
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), args.port) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        # A first adapter to serve while the benchmark's one trains (a tiny one, quickly).
        train(client, "probe", random.Random(1).sample(train_rows, 64))
        latency(client, "probe", texts, 3)  # warm-up
        with CpuMonitor() as mon:
            result["latency_idle"] = latency(client, "probe", texts, args.latency_seconds)
        result["latency_idle"]["machine"] = mon.result

        def during(job_id: str) -> dict[str, Any]:
            while client.get(f"/jobs/{job_id}").json()["progress"] is None:
                time.sleep(0.5)  # the worker is still starting: wait for its training loop
            return latency(client, "probe", texts, args.latency_seconds)

        run = train(client, "sst2", sample, during, config)
        run["train_examples_per_s"] = run["result"]["train_examples_per_second"]
        run["dev_accuracy"] = round(dev_accuracy(client, "sst2", dev), 4)
        result["sample"] = run
        if args.full:
            full = train(client, "sst2-full", train_rows, config=config)
            full["dev_accuracy"] = round(dev_accuracy(client, "sst2-full", dev), 4)
            result["full"] = full
    idle, busy = result["latency_idle"]["p95_ms"], run["latency_during_training"]["p95_ms"]
    result["targets"] = {
        "dev_accuracy >= 0.85": {"value": run["dev_accuracy"], "met": run["dev_accuracy"] >= 0.85},
        "train examples/s >= 104": {"value": run["train_examples_per_s"],
                                    "met": run["train_examples_per_s"] >= 104},
        "p95 during training <= 2x idle": {"value": round(busy / idle, 2), "met": busy <= 2 * idle},
    }
    emit(result)


if __name__ == "__main__":
    main()

"""Throughput of cross-task dynamic batching, in process and end to end over HTTP.

    python -m bench.bench_http --data ../shared/data [--threads 2] [--requests 600]

1. In process (embedded MiniLM, batch 32, SST-2 dev sentences): the bare base in dev order and
   in length-grouped batches, against the compute-bound limit measured in the same run (fp32
   matmul rate on this machine x FLOPs the dev sentences need); batch-1 forward latency.
2. HTTP: the server (uvicorn, one worker) in a subprocess, a load generator in another process
   (bench/loadgen.py), concurrency 1, 8, 32, 64: requests/s and p50/p95/p99 latency for
   (a) one task, (b) 8 tasks chosen at random per request, (c) 64 tasks, (d) batching off with
   8 tasks. Every answer is checked to belong to its request.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.adapters.store import AdapterStore
from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature
from bench.common import (
    DEFAULT_DATA_DIR,
    CpuMonitor,
    chunks,
    emit,
    load_texts,
    log,
    machine_info,
    percentile,
    save_random_adapters,
    setup_logging,
)
from bench.loadgen import generate
from bench.server import Server

CONCURRENCY = (1, 8, 32, 64)
SCENARIOS = {"a_one_task": 1, "b_8_tasks": 8, "c_64_tasks": 64}


# ------------------------------------------------------------------------------ in process
def flops_per_sentence(encoder: FrozenEncoder, tokens: int) -> float:
    """Multiply-adds x 2 of one forward pass over `tokens` tokens (dense layers + attention)."""
    cfg = encoder.model.config
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dense = 2 * tokens * (4 * h * h + 2 * h * inter)
    attention = 2 * 2 * tokens * tokens * h
    return float(layers * (dense + attention))


def matmul_gflops(encoder: FrozenEncoder, rows: int = 800, repeats: int = 20) -> float:
    """Best fp32 matmul rate for the encoder's own layer shapes, GFLOP/s."""
    cfg = encoder.model.config
    h, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = [(h, 3 * h), (h, h), (h, inter), (inter, h)]
    xs = {k: torch.randn(rows, k) for k, _ in shapes}
    ws = [torch.randn(k, n) for k, n in shapes]
    flops = sum(2 * rows * k * n for k, n in shapes)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for (k, _), w in zip(shapes, ws, strict=True):
            torch.mm(xs[k], w)
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


@torch.inference_mode()
def forward_rate(encoder: FrozenEncoder, batches: list[list[Feature]], repeats: int) -> float:
    """Sentences per second of the bare base over `batches`; best of `repeats` passes."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms up
        t0 = time.perf_counter()
        for features in batches:
            encoder.forward(encoder.tokenizer.collate(features))
        best = min(best, time.perf_counter() - t0)
    return sum(len(b) for b in batches) / best


@torch.inference_mode()
def batch1_ms(encoder: FrozenEncoder, features: list[Feature]) -> float:
    times = []
    for f in features:
        t0 = time.perf_counter()
        encoder.forward(encoder.tokenizer.collate([f]))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[5:]) * 1000


def in_process(encoder: FrozenEncoder, texts: list[str], batch_size: int, repeats: int
               ) -> dict[str, Any]:
    features = encoder.tokenizer.encode(texts)
    lengths = [len(f) for f in features]
    dev_order = chunks(features, batch_size)
    grouped = chunks(sorted(features, key=len), batch_size)
    rate = matmul_gflops(encoder)
    total_flops = sum(flops_per_sentence(encoder, n) for n in lengths)
    limit = rate * 1e9 / (total_flops / len(features))
    padded = sum(len(b) * max(len(f) for f in b) for b in dev_order)
    dev_rate = forward_rate(encoder, dev_order, repeats)
    grouped_rate = forward_rate(encoder, grouped, repeats)
    return {
        "sentences": len(features), "mean_tokens": round(statistics.mean(lengths), 1),
        "padding_factor_dev_order": round(padded / sum(lengths), 3),
        "matmul_gflops": round(rate, 1),
        "gflop_per_sentence": round(total_flops / len(features) / 1e9, 3),
        "compute_bound_limit_per_s": round(limit, 1),
        "base_dev_order_per_s": round(dev_rate, 1),
        "base_length_grouped_per_s": round(grouped_rate, 1),
        "grouped_share_of_limit": round(grouped_rate / limit, 3),
        "batch1_forward_ms": round(batch1_ms(encoder, features[:200]), 2),
    }


# ------------------------------------------------------------------------------------ HTTP
def load(port: int, concurrency: int, requests: int, tasks: list[str], texts: list[str],
         seed: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:  # its own process: the generator's CPU is not the server's
        raw = pool.apply(generate, ("127.0.0.1", port, concurrency, requests, tasks, texts, seed))
    lat = [x * 1000 for x in raw["latencies"]]
    return {
        "concurrency": concurrency, "requests": requests,
        "requests_per_s": round(len(lat) / raw["wall"], 1),
        "p50_ms": round(percentile(lat, 50), 2), "p95_ms": round(percentile(lat, 95), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "statuses": {str(k): v for k, v in raw["statuses"].items()},
        "mismatched": raw["mismatched"],
    }


def http_section(store: Path, names: list[str], texts: list[str], args: argparse.Namespace
                 ) -> dict[str, Any]:
    results: dict[str, Any] = {}
    runs = [(name, n, True) for name, n in SCENARIOS.items()] + [("d_8_tasks_no_batching", 8, False)]
    for batching in (True, False):
        server = Server(store, args.port, {"NUM_THREADS": str(args.threads),
                        "BATCHING_ENABLED": str(batching).lower(),
                        "BATCH_WAIT_MS": str(args.wait_ms)})
        try:
            server.wait_ready()
            load(args.port, 8, 128, names, texts, seed=99)  # warm-up: every adapter resident
            for name, n_tasks, on in runs:
                if on != batching:
                    continue
                results[name] = []
                for c in CONCURRENCY:
                    requests = args.requests if c > 1 else args.requests // 2
                    with CpuMonitor() as mon:
                        row = load(args.port, c, requests, names[:n_tasks], texts, seed=c)
                    row["machine"] = mon.result
                    results[name].append(row)
                    log.info("%s c=%d: %s req/s p50 %s ms", name, c, row["requests_per_s"],
                             row["p50_ms"])
        finally:
            server.stop()
    return results


def targets(inproc: dict[str, Any], http: dict[str, Any]) -> dict[str, Any]:
    def at(name: str, c: int, key: str) -> float:
        return next(r[key] for r in http[name] if r["concurrency"] == c)

    a64 = at("a_one_task", 64, "requests_per_s")
    checks = {
        "grouped_share_of_limit >= 0.70": inproc["grouped_share_of_limit"],
        "b/a at 64 >= 0.90": at("b_8_tasks", 64, "requests_per_s") / a64,
        "c/a at 64 >= 0.80": at("c_64_tasks", 64, "requests_per_s") / a64,
        "a at 64 / in-process ceiling >= 0.60": a64 / inproc["base_dev_order_per_s"],
        "b / d at 64 >= 5": at("b_8_tasks", 64, "requests_per_s")
        / at("d_8_tasks_no_batching", 64, "requests_per_s"),
        "p50 at 1 - batch-1 forward <= 5 ms": at("a_one_task", 1, "p50_ms")
        - inproc["batch1_forward_ms"],
    }
    bounds = {"grouped_share_of_limit >= 0.70": 0.70, "b/a at 64 >= 0.90": 0.90,
              "c/a at 64 >= 0.80": 0.80, "a at 64 / in-process ceiling >= 0.60": 0.60,
              "b / d at 64 >= 5": 5.0}
    out = {}
    for name, value in checks.items():
        ok = value <= 5.0 if name.startswith("p50") else value >= bounds[name]
        out[name] = {"value": round(value, 3), "met": ok}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600, help="per concurrency level")
    parser.add_argument("--wait-ms", type=float, default=None,
                        help="server BATCH_WAIT_MS (default: the service default)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    setup_logging()
    if args.wait_ms is None:
        from app.config import Settings

        args.wait_ms = Settings().batch_wait_ms
    torch.set_num_threads(args.threads)
    texts = load_texts(args.data)
    encoder = FrozenEncoder.load("")
    result: dict[str, Any] = {"machine": machine_info(encoder), "batch_wait_ms": args.wait_ms}
    log.info("in-process measurements")
    with CpuMonitor() as mon:
        result["in_process"] = in_process(encoder, texts, args.batch_size, args.repeats)
    result["in_process"]["machine"] = mon.result
    with tempfile.TemporaryDirectory() as tmp:
        store = AdapterStore(Path(tmp) / "store")
        names = [f"task{i:02d}" for i in range(64)]
        save_random_adapters(store, encoder, names)
        del encoder  # the server loads its own
        result["http"] = http_section(store.root, names, texts, args)
    result["targets"] = targets(result["in_process"], result["http"])
    emit(result)


if __name__ == "__main__":
    main()

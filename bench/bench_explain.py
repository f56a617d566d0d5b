"""Explanations: faithfulness and completeness on SST-2, and their cost through the API.

    python -m bench.bench_explain --data ../shared/data [--rows 4000] [--dev 400] [--steps 16]
                                  [--concurrency 16] [--captum-rows 16]

1. Own batched integrated gradients against Captum's LayerIntegratedGradients, in process, on
   `--captum-rows` dev sentences of two random adapters (bench/explain_compare.py; 0 skips it).
2. The server (uvicorn subprocess, embedded MiniLM) and an SST-2 adapter trained through the API
   with the default config on a seeded sample of `--rows` rows of sst2/train.jsonl.
3. Faithfulness: `--dev` dev sentences (a seeded sample) explained with `--steps` steps; in each
   sentence of at least 4 words, the 2 words with the highest attribution deleted, and 2 words
   drawn at random deleted: how much the predicted label's probability drops (a plain prediction
   of the shortened text). Target: the top-2 mean drop >= 3x the random-2 mean drop.
4. Completeness: per sentence |delta| / |output - baseline| (delta = sum of the attributions -
   (output - baseline)), with the steps used: as served by default (`--steps` steps, doubled
   while over the server's EXPLAIN_TOLERANCE) and with exactly `--steps` steps
   (explain_tolerance 0). Target: within 5%.
5. Cost: one-sentence requests at `--concurrency`, plain, explained as by default and explained
   with exactly `--steps` steps (a load generator in its own process): sentences/s of each;
   target: explained costs at most 20x plain. And the latency
   of plain requests one at a time, alone and while explained ones run at `--concurrency` (a
   plain row waits for one explain pass at most).
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.bench_train import train
from bench.common import (
    DEFAULT_DATA_DIR,
    CpuMonitor,
    chunks,
    emit,
    log,
    percentile,
    read_jsonl,
    runtime_info,
    setup_logging,
)
from bench.loadgen import Connection
from bench.server import Server

EXPLAIN_CHUNK = 8  # sentences per explain request in the faithfulness section
PREDICT_CHUNK = 64
MIN_WORDS = 4  # deleting 2 words must leave some


# ------------------------------------------------------------------------------ faithfulness
def explain_body(steps: int, tolerance: float | None) -> dict[str, Any]:
    """An explained request's options; tolerance None: the server's EXPLAIN_TOLERANCE."""
    body: dict[str, Any] = {"explain": True, "explain_steps": steps}
    return body if tolerance is None else {**body, "explain_tolerance": tolerance}


def explain(client: httpx.Client, task: str, texts: list[str], steps: int,
            tolerance: float | None = None) -> list[dict[str, Any]]:
    out = []
    for part in chunks(texts, EXPLAIN_CHUNK):
        r = client.post(f"/predict/{task}", json={"inputs": part,
                                                  **explain_body(steps, tolerance)}, timeout=600)
        r.raise_for_status()
        out += r.json()["predictions"]
        log.info("explained %d/%d sentences", len(out), len(texts))
    return out


def probabilities(client: httpx.Client, task: str, texts: list[str], labels: list[str]
                  ) -> list[float]:
    """Each text's probability of its label (a plain prediction)."""
    out: list[float] = []
    for part, names in zip(chunks(texts, PREDICT_CHUNK), chunks(labels, PREDICT_CHUNK),
                           strict=True):
        r = client.post(f"/predict/{task}", json={"inputs": part}, timeout=600)
        r.raise_for_status()
        out += [p["scores"][n] for p, n in zip(r.json()["predictions"], names, strict=True)]
    return out


def delete(text: str, words: list[dict[str, Any]]) -> str:
    """`text` without the character spans of `words`, spaces collapsed."""
    keep, at = [], 0
    for w in sorted(words, key=lambda w: w["start"]):
        keep.append(text[at:w["start"]])
        at = w["end"]
    keep.append(text[at:])
    return " ".join("".join(keep).split())


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 5), "p50": round(percentile(values, 50), 5),
            "p90": round(percentile(values, 90), 5), "p95": round(percentile(values, 95), 5),
            "max": round(max(values), 5)}


def completeness(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per sentence |delta| / |output - baseline|, |delta|, and the steps that gave them."""
    relative, absolute, steps = [], [], []
    for p in predictions:
        e = p["explanation"]
        absolute.append(abs(e["delta"]))
        steps.append(e["steps"])
        change = abs(e["output"] - e["baseline"])
        if change > 1e-6:
            relative.append(abs(e["delta"]) / change)
    return {
        "delta_relative": {**stats(relative), "within_5pct": round(
            sum(r <= 0.05 for r in relative) / len(relative), 4), "sentences": len(relative)},
        "delta_absolute": stats(absolute),
        "steps": {"mean": round(statistics.mean(steps), 2),
                  "sentences_per_steps": {str(k): steps.count(k) for k in sorted(set(steps))}},
    }


def faithfulness(client: httpx.Client, task: str, texts: list[str], gold: list[str], steps: int,
                 seed: int) -> dict[str, Any]:
    predictions = explain(client, task, texts, steps)
    rng = random.Random(seed)
    kept, top, rnd = [], [], []
    for text, p in zip(texts, predictions, strict=True):
        words = p["attributions"]
        if len(words) < MIN_WORDS:
            continue
        best = sorted(words, key=lambda w: -w["score"])[:2]
        kept.append((text, p))
        top.append(delete(text, best))
        rnd.append(delete(text, rng.sample(words, 2)))
    labels = [p["label"] for _, p in kept]
    before = [p["score"] for _, p in kept]
    drop_top = [b - a for b, a in zip(before, probabilities(client, task, top, labels),
                                      strict=True)]
    drop_rnd = [b - a for b, a in zip(before, probabilities(client, task, rnd, labels),
                                      strict=True)]
    mean_top, mean_rnd = statistics.mean(drop_top), statistics.mean(drop_rnd)
    return {
        "sentences": len(texts), "steps": steps,
        "accuracy": round(sum(p["label"] == g for p, g in zip(predictions, gold, strict=True))
                          / len(texts), 4),
        "deletion": {
            "sentences": len(kept), "skipped_under_4_words": len(texts) - len(kept),
            "mean_drop_top2": round(mean_top, 5), "mean_drop_random2": round(mean_rnd, 5),
            "ratio": round(mean_top / mean_rnd, 3) if mean_rnd > 0 else None,
            "share_top2_drops_more": round(sum(t > r for t, r in zip(drop_top, drop_rnd,
                                                                     strict=True)) / len(kept), 3),
        },
        **completeness(predictions),
    }


# ------------------------------------------------------------------------------------ cost
def load(port: int, concurrency: int, texts: list[str], body: dict[str, Any]) -> dict[str, Any]:
    """Process entry point: each text once, one a request, `concurrency` connections."""

    async def client(conn: Connection, cursor: list[int], out: dict[str, Any]) -> None:
        try:
            while cursor[0] < len(texts):
                text = texts[cursor[0]]
                cursor[0] += 1
                t0 = time.perf_counter()
                status, answer = await conn.request(
                    "POST", "/predict/sst2", json.dumps({"inputs": [text], **body}).encode())
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
                if status == 200:
                    out["latencies"].append(time.perf_counter() - t0)
        finally:
            conn.close()

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"statuses": {}, "latencies": []}
        cursor = [0]
        t0 = time.perf_counter()
        await asyncio.gather(*(client(Connection("127.0.0.1", port), cursor, out)
                               for _ in range(concurrency)))
        out["wall"] = time.perf_counter() - t0
        return out

    return asyncio.run(run())


def summary(raw: dict[str, Any], requests: int) -> dict[str, Any]:
    ms = [x * 1000 for x in raw["latencies"]]
    return {"requests": requests, "sentences_per_s": round(len(ms) / raw["wall"], 2),
            "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "max_ms": round(max(ms), 1),
            "statuses": {str(k): v for k, v in raw["statuses"].items()}}


def rate(port: int, concurrency: int, texts: list[str], body: dict[str, Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with CpuMonitor() as mon, ctx.Pool(1) as pool:  # the generator's CPU is not the server's
        raw = pool.apply(load, (port, concurrency, texts, body))
    return {**summary(raw, len(texts)), "machine": mon.result}


def plain_beside_explained(port: int, concurrency: int, plain: list[str], explained: list[str],
                           body: dict[str, Any]) -> dict[str, Any]:
    """One-sentence plain requests, one at a time, while explained ones run at `concurrency`:
    a plain row waits for one explain pass at most."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        heavy = pool.apply_async(load, (port, concurrency, explained, body))
        light = pool.apply_async(load, (port, 1, plain, {}))
        return {"plain_c1": summary(light.get(), len(plain)),
                "explained": summary(heavy.get(), len(explained))}


def cost(port: int, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    plain_texts = [rng.choice(texts) for _ in range(args.plain_requests)]
    explain_texts = [rng.choice(texts) for _ in range(args.explain_requests)]
    explained_body = explain_body(args.steps, None)  # refined to the server's tolerance
    fixed_body = explain_body(args.steps, 0)  # exactly args.steps
    rate(port, args.concurrency, plain_texts[:64], {})  # warm-up
    rate(port, args.concurrency, explain_texts[:args.concurrency], explained_body)
    plain = rate(port, args.concurrency, plain_texts, {})
    log.info("plain: %s sentences/s", plain["sentences_per_s"])
    explained = rate(port, args.concurrency, explain_texts, explained_body)
    log.info("explained (refined): %s sentences/s", explained["sentences_per_s"])
    fixed = rate(port, args.concurrency, explain_texts, fixed_body)
    log.info("explained (%d steps): %s sentences/s", args.steps, fixed["sentences_per_s"])
    alone = rate(port, 1, plain_texts[:args.plain_requests // 4], {})
    beside = plain_beside_explained(port, args.concurrency, plain_texts[:args.plain_requests // 4],
                                    explain_texts, explained_body)
    log.info("plain p50 alone %s ms, beside explanations %s ms", alone["p50_ms"],
             beside["plain_c1"]["p50_ms"])
    return {"concurrency": args.concurrency, "steps": args.steps, "plain": plain,
            "explained": explained, "explained_fixed_steps": fixed,
            "plain_over_explained": round(plain["sentences_per_s"]
                                          / explained["sentences_per_s"], 2),
            "plain_over_explained_fixed_steps": round(plain["sentences_per_s"]
                                                      / fixed["sentences_per_s"], 2),
            "plain_c1_alone": alone, "beside_explained": beside}


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rows", type=int, default=4000, help="training rows of sst2/train")
    parser.add_argument("--dev", type=int, default=400, help="dev sentences explained")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--plain-requests", type=int, default=800)
    parser.add_argument("--explain-requests", type=int, default=160)
    parser.add_argument("--captum-rows", type=int, default=16, help="0: no Captum comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args(argv)
    setup_logging()
    train_rows = read_jsonl(args.data / "sst2" / "train.jsonl")
    dev = random.Random(args.seed).sample(read_jsonl(args.data / "sst2" / "dev.jsonl"), args.dev)
    texts = [row["text"] for row in dev]
    result: dict[str, Any] = {"machine": runtime_info(), "rows": args.rows, "seed": args.seed}
    if args.captum_rows:
        from app.model.encoder import FrozenEncoder
        from bench.explain_compare import compare

        torch.set_num_threads(args.threads)
        log.info("own batched integrated gradients against Captum, in process")
        with CpuMonitor() as mon:
            result["captum_vs_own"] = compare(FrozenEncoder.load(""), texts[:args.captum_rows],
                                              args.steps, repeats=2)
        result["captum_vs_own"]["machine"] = mon.result
    settings = {"NUM_THREADS": str(args.threads), "EXPLAIN_MAX_STEPS": str(max(64, args.steps))}
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), args.port, settings) as server, \
            httpx.Client(base_url=server.url, timeout=600) as client:
        sample = random.Random(args.seed).sample(train_rows, args.rows)
        trained = train(client, "sst2", sample)
        result["training"] = {"wall_s": trained["wall_s"], "result": trained["result"]}
        with CpuMonitor() as mon:
            result["faithfulness"] = faithfulness(client, "sst2", texts,
                                                  [row["label"] for row in dev], args.steps,
                                                  args.seed)
        result["faithfulness"]["machine"] = mon.result
        log.info("the same sentences with exactly %d steps (no refinement)", args.steps)
        result["fixed_steps"] = completeness(explain(client, "sst2", texts, args.steps, 0))
        result["cost"] = cost(server.port, texts, args)
    deletion, delta = result["faithfulness"]["deletion"], result["faithfulness"]["delta_relative"]
    ratio, fixed = result["cost"]["plain_over_explained"], \
        result["cost"]["plain_over_explained_fixed_steps"]
    result["targets"] = {
        "top-2 deletion drop >= 3x random-2": {"value": deletion["ratio"],
                                               "met": (deletion["ratio"] or 0) >= 3},
        "mean |delta| / |output - baseline| <= 5% (default: refined)": {
            "value": delta["mean"], "met": delta["mean"] <= 0.05},
        f"mean |delta| / |output - baseline| <= 5% (exactly {args.steps} steps)": {
            "value": result["fixed_steps"]["delta_relative"]["mean"],
            "met": result["fixed_steps"]["delta_relative"]["mean"] <= 0.05},
        "explained (default: refined) costs <= 20x plain": {"value": ratio, "met": ratio <= 20},
        f"explained with exactly {args.steps} steps costs <= 20x plain": {
            "value": fixed, "met": fixed <= 20},
    }
    emit(result)


if __name__ == "__main__":
    main()

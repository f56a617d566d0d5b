"""Bounded load test on loopback: many clients for minutes, predictions mixed with imports,
deletions and a training job; no 5xx, no lost or mixed-up answers, flat resident memory.

    python -m bench.bench_load [--duration 180] [--clients 64] [--tiny]

1. Starts the server (uvicorn, one worker, bench/server.py) on an empty store with the embedded
   MiniLM, or with --tiny a tiny random BERT (a quick check of the script itself).
2. Imports one random adapter per task type with PUT /adapters/{name}: two classification,
   regression (text pairs), token classification, question answering.
3. Asks each, one input per request and one request at a time, for the answer to every input of
   its pool (distinct generated sentences). An input whose answer another input of the task also
   gets is dropped, so that a mixed-up answer cannot pass for the right one.
4. For --duration seconds, --clients connections send predictions (1-4 pool inputs each, over
   the stable tasks; every answer is compared with the expected one) and now and then a churn
   cycle on a throwaway name: import, predict (it must answer like its source), delete. One
   training job (tiny data) runs meanwhile. The server's RSS is sampled every second.
Prints one JSON object with a pass/fail per criterion; exits 1 when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.adapters.store import AdapterStore
from app.model.encoder import FrozenEncoder
from app.tasks import HeadConfig
from bench.common import emit, log, machine_info, percentile, save_random_adapters, setup_logging
from bench.loadgen import Connection, same_answer
from bench.server import Server
from tests.tiny import WORDS, build_tiny_bert

HOST = "127.0.0.1"
TASKS = {
    "cls-a": HeadConfig(task_type="classification", labels=["neg", "pos"]),
    "cls-b": HeadConfig(task_type="classification", labels=["x", "y", "z"]),
    "reg": HeadConfig(task_type="regression"),
    "ner": HeadConfig(task_type="token_classification", labels=["O", "B-PER", "I-PER"]),
    "qa": HeadConfig(task_type="question_answering"),
}
OPTIONS = {"ner": {"return_tokens": True}}  # every word's tag and score: a finer fingerprint
CHURN_SOURCE = "cls-a"  # what a throwaway name is imported from, so it must answer the same
TRAINED = "trained"
MAX_INPUTS = 4  # per prediction request
REQUEST_TIMEOUT_S = 120.0  # an answer not back by then counts as lost
TERMINAL = ("succeeded", "failed", "cancelled")


# --------------------------------------------------------------------------------- inputs
def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def make_pool(task_type: str, size: int, rng: random.Random) -> list[Any]:
    """`size` distinct inputs of the form the task type takes."""
    pool: dict[str, Any] = {}
    while len(pool) < size:
        if task_type == "regression":
            item: Any = {"text": sentence(rng, 4, 12), "text_pair": sentence(rng, 4, 12)}
        elif task_type == "question_answering":
            item = {"question": sentence(rng, 3, 7) + "?", "context": sentence(rng, 12, 30) + "."}
        else:
            item = sentence(rng, 5, 16)
        pool[json.dumps(item)] = item
    return list(pool.values())


def predict_body(task: str, items: list[Any]) -> bytes:
    return json.dumps({"inputs": items, **OPTIONS.get(task, {})}).encode()


def distinguishable(pool: list[Any], expected: list[Any]) -> list[int]:
    """Indices of the inputs whose answer no other input of the pool also gets."""
    return [i for i in range(len(pool))
            if not any(j != i and same_answer(expected[i], expected[j]) for j in range(len(pool)))]


def training_rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    good, bad = ["good", "great", "fun", "love"], ["bad", "awful", "boring", "hate"]
    return [{"text": f"{sentence(rng, 2, 6)} {rng.choice(good if i % 2 else bad)}",
             "label": "pos" if i % 2 else "neg"} for i in range(n)]


# ---------------------------------------------------------------------------------- tally
@dataclass
class Tally:
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    mixed_up: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)  # the first few, for the report

    def note(self, problem: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(problem)

    def failed(self, kind: str, ok: int) -> int:
        return sum(n for status, n in self.statuses[kind].items() if status != ok)


async def call(conn: Connection, tally: Tally, kind: str, method: str, path: str,
               body: bytes = b"", content_type: str = "application/json"
               ) -> tuple[int, bytes] | None:
    """Send one request; its status is counted under `kind`, no answer at all as lost."""
    try:
        status, data = await asyncio.wait_for(conn.request(method, path, body, content_type),
                                              REQUEST_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        tally.lost += 1
        tally.note(f"{kind}: {method} {path}: no answer ({exc!r})")
        return None
    tally.statuses[kind][status] += 1
    if status >= 500 or (status >= 400 and kind != "predict_trained"):
        tally.note(f"{kind}: {method} {path}: {status} {data[:200]!r}")
    return status, data


# ------------------------------------------------------------------------------ the load
@dataclass
class Plan:
    """The stable tasks' inputs with their expected answers, handed out in turn."""

    pools: dict[str, list[Any]]
    expected: dict[str, list[Any]]
    churn_file: bytes
    cursors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def draw(self, rng: random.Random, task: str | None = None
             ) -> tuple[str, list[Any], list[Any]]:
        """A task, 1-MAX_INPUTS of its inputs and their answers. Each task's inputs go round in
        order, so requests in flight together never carry the same input."""
        task = task or rng.choice(sorted(self.pools))
        n, start = len(self.pools[task]), self.cursors[task]
        idx = [(start + i) % n for i in range(rng.randint(1, MAX_INPUTS))]
        self.cursors[task] = (start + len(idx)) % n
        return task, [self.pools[task][i] for i in idx], [self.expected[task][i] for i in idx]


async def predict(conn: Connection, tally: Tally, plan: Plan, rng: random.Random,
                  kind: str = "predict", name: str | None = None, source: str | None = None
                  ) -> None:
    task, items, expected = plan.draw(rng, source)
    name = name or task
    t0 = time.perf_counter()
    reply = await call(conn, tally, kind, "POST", f"/predict/{name}", predict_body(task, items))
    if reply is None or reply[0] != 200:
        return
    tally.latencies[kind].append(time.perf_counter() - t0)
    answer = json.loads(reply[1])
    if answer["task"] != name or not same_answer(answer["predictions"], expected):
        tally.mixed_up += 1
        tally.note(f"{kind}: {name} answered {answer['predictions']!r} for {items!r}, "
                   f"expected {expected!r}")


async def churn(conn: Connection, tally: Tally, plan: Plan, rng: random.Random, name: str
                ) -> None:
    """Import a throwaway adapter, predict with it, delete it."""
    reply = await call(conn, tally, "import", "PUT", f"/adapters/{name}", plan.churn_file,
                       "application/octet-stream")
    if reply is not None and reply[0] == 201:
        await predict(conn, tally, plan, rng, "predict_churn", name, CHURN_SOURCE)
    await call(conn, tally, "delete", "DELETE", f"/adapters/{name}")


async def client(n: int, port: int, plan: Plan, tally: Tally, deadline: float,
                 churn_share: float) -> None:
    rng, conn, cycles = random.Random(n), Connection(HOST, port), 0
    try:
        while time.monotonic() < deadline:
            if rng.random() < churn_share:
                cycles += 1
                await churn(conn, tally, plan, rng, f"churn-{n}-{cycles}")
            else:
                await predict(conn, tally, plan, rng)
    finally:
        conn.close()


async def training(port: int, tally: Tally, deadline: float, grace_s: float) -> dict[str, Any]:
    """Submit one small job, follow it to its end, then predict with the adapter it stored."""
    conn, t0 = Connection(HOST, port), time.monotonic()
    body = {"name": TRAINED, "task_type": "classification",
            "train": training_rows(48, random.Random(7)),
            "config": {"epochs": 1, "batch_size": 8, "max_seq_length": 32}}
    reply = await call(conn, tally, "train_submit", "POST", "/adapters", json.dumps(body).encode())
    if reply is None or reply[0] != 202:
        return {"status": "not submitted"}
    job = json.loads(reply[1])
    while job["status"] not in TERMINAL and time.monotonic() < deadline + grace_s:
        await asyncio.sleep(2)
        reply = await call(conn, tally, "job_poll", "GET", f"/jobs/{job['job_id']}")
        if reply is not None and reply[0] == 200:
            job = json.loads(reply[1])
    result = {"job_id": job["job_id"], "status": job["status"], "error": job["error"],
              "seconds": round(time.monotonic() - t0, 1)}
    if job["status"] == "succeeded":
        reply = await call(conn, tally, "predict_trained", "POST", f"/predict/{TRAINED}",
                           predict_body(TRAINED, ["a good fun film"]))
        result["served"] = reply is not None and reply[0] == 200
    conn.close()
    return result


# ---------------------------------------------------------------------------- memory
def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


async def sample_rss(pid: int, t0: float, deadline: float, samples: list[tuple[float, float]]
                     ) -> None:
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - t0, rss_mib(pid)))
        await asyncio.sleep(1.0)


def rss_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    """RSS over the run; after warm-up: the change between the medians of its first and last
    tenth (robust to a single spike) and the least-squares slope."""
    after = [(t, r) for t, r in samples if t >= warmup_s] or samples
    k = max(1, len(after) // 10)
    start = statistics.median(r for _, r in after[:k])
    end = statistics.median(r for _, r in after[-k:])
    slope = statistics.linear_regression([t for t, _ in after], [r for _, r in after]).slope \
        if len(after) > 1 else 0.0
    return {
        "at_start": round(samples[0][1], 1), "at_warmup_end": round(start, 1),
        "at_end": round(end, 1), "max": round(max(r for _, r in samples), 1),
        "growth_after_warmup": round(end - start, 1),
        "slope_mib_per_min": round(slope * 60, 2), "samples": len(samples),
        "every_10s": [round(r, 1) for _, r in samples[::10]],
    }


# ----------------------------------------------------------------------------- the run
def adapter_files(encoder: FrozenEncoder, scratch: Path) -> dict[str, bytes]:
    """One random adapter file per stable task, as /adapters/{name}/download would give it."""
    store = AdapterStore(scratch)
    for seed, (name, head) in enumerate(TASKS.items()):
        save_random_adapters(store, encoder, [name], seed=seed, head_config=head)
    return {name: store.weights_path(name, 1).read_bytes() for name in TASKS}


async def prepare(port: int, files: dict[str, bytes], pool_size: int) -> tuple[Plan, dict]:
    """Import the stable adapters, then ask each alone for the answer to every pool input."""
    conn, tally, rng = Connection(HOST, port), Tally(), random.Random(0)
    pools, expected, dropped = {}, {}, {}
    for name, data in files.items():
        reply = await call(conn, tally, "import", "PUT", f"/adapters/{name}", data,
                           "application/octet-stream")
        if reply is None or reply[0] != 201:
            raise SystemExit(f"import of {name} failed: {tally.problems}")
        pool = make_pool(TASKS[name].task_type, pool_size, rng)
        answers = []
        for item in pool:
            reply = await call(conn, tally, "expected", "POST", f"/predict/{name}",
                               predict_body(name, [item]))
            if reply is None or reply[0] != 200:
                raise SystemExit(f"predict on {name} failed: {tally.problems}")
            answers.append(json.loads(reply[1])["predictions"][0])
        keep = distinguishable(pool, answers)
        pools[name], expected[name] = [pool[i] for i in keep], [answers[i] for i in keep]
        dropped[name] = len(pool) - len(keep)
    conn.close()
    return Plan(pools, expected, files[CHURN_SOURCE]), {
        "inputs_per_task": {k: len(v) for k, v in pools.items()},
        "dropped_as_indistinguishable": dropped}


async def load(server: Server, files: dict[str, bytes], args: argparse.Namespace
               ) -> dict[str, Any]:
    t_setup = time.monotonic()
    plan, setup = await prepare(server.port, files, args.pool)
    setup["seconds"] = round(time.monotonic() - t_setup, 1)
    log.info("setup done in %.0f s: %s", setup["seconds"], setup["inputs_per_task"])
    tally, samples = Tally(), []
    t0 = time.monotonic()
    deadline = t0 + args.duration
    trainer = asyncio.create_task(training(server.port, tally, deadline, args.train_grace))
    sampler = asyncio.create_task(sample_rss(server.proc.pid, t0, deadline, samples))
    await asyncio.gather(*(client(n, server.port, plan, tally, deadline, args.churn)
                           for n in range(args.clients)))
    wall = time.monotonic() - t0
    await sampler
    trained = await trainer
    return report(args, setup, tally, wall, rss_summary(samples, args.warmup), trained)


def report(args: argparse.Namespace, setup: dict[str, Any], tally: Tally, wall: float,
           rss: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    statuses = {kind: dict(sorted(c.items())) for kind, c in sorted(tally.statuses.items())}
    requests = sum(sum(c.values()) for c in tally.statuses.values()) + tally.lost
    lat = [x * 1000 for x in tally.latencies["predict"]] or [0.0]
    churn_failed = (tally.failed("import", 201) + tally.failed("predict_churn", 200)
                    + tally.failed("delete", 200))
    server_errors = sum(n for c in tally.statuses.values() for s, n in c.items() if s >= 500)
    criteria = {
        "zero_5xx": server_errors == 0,
        "zero_lost": tally.lost == 0,
        "zero_mixed_up": tally.mixed_up == 0,
        "stable_predictions_never_fail": tally.failed("predict", 200) == 0,
        "imports_and_deletes_succeed": churn_failed == 0,
        "training_job_succeeded_and_served": trained.get("served", False),
        "rss_flat_after_warmup": rss["growth_after_warmup"] <= args.rss_tolerance_mib,
    }
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "setup": setup,
        "load": {"seconds": round(wall, 1), "requests": requests,
                 "requests_per_s": round(requests / wall, 1),
                 "per_kind": {k: sum(c.values()) for k, c in statuses.items()},
                 "statuses": statuses, "lost": tally.lost, "mixed_up": tally.mixed_up,
                 "server_errors": server_errors, "churn_failures": churn_failed,
                 "predict_latency_ms": {f"p{q}": round(percentile(lat, q), 1)
                                        for q in (50, 95, 99)}},
        "training": trained,
        "rss_mib": rss,
        "problems": tally.problems,
        "criteria": criteria,
        "pass": all(criteria.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of load before RSS must stay flat")
    parser.add_argument("--rss-tolerance-mib", type=float, default=32.0,
                        help="most RSS growth after warm-up that still counts as flat")
    parser.add_argument("--churn", type=float, default=0.02,
                        help="share of client turns that import, use and delete an adapter")
    parser.add_argument("--pool", type=int, default=120, help="inputs per stable task")
    parser.add_argument("--max-resident", type=int, default=4,
                        help="server MAX_RESIDENT_ADAPTERS: below the task count, so LRU "
                        "evictions and reloads happen all the time")
    parser.add_argument("--threads", type=int, default=2, help="server NUM_THREADS")
    parser.add_argument("--train-grace", type=float, default=300.0,
                        help="seconds the training job may take after the load ends")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny random BERT instead of MiniLM: checks the script quickly")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args(argv)
    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        base = str(build_tiny_bert(Path(tmp) / "tiny")) if args.tiny else ""
        encoder = FrozenEncoder.load(base)
        files = adapter_files(encoder, Path(tmp) / "scratch")
        machine = machine_info(encoder)
        del encoder  # the server loads its own
        settings = {"BASE_MODEL": base, "NUM_THREADS": str(args.threads), "TRAIN_THREADS": "1",
                    "MAX_RESIDENT_ADAPTERS": str(args.max_resident)}
        with Server(Path(tmp) / "store", args.port, settings) as server:
            result = {"machine": machine, **asyncio.run(load(server, files, args))}
    emit(result)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

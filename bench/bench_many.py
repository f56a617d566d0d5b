"""A thousand adapters (issue 13): throughput, latency and cold loads over HTTP as the adapters
on disk and the tasks in the traffic grow from a few to 1,000 (and 10,000).

    python -m bench.bench_many --data ../shared/data [--adapters 1000] [--distinct 8]
        [--clients 64] [--requests 1000] [--large 10000 | --without-10k] [--setting KEY=VALUE]

The server: uvicorn, one worker (bench/server.py), the embedded MiniLM, its own temporary
ADAPTERS_DIR and the service's default settings (the store polled every STORE_POLL_SECONDS, the
adapter tiers' budgets derived from free memory, preloading on, ...) unless --setting says
otherwise. The load: bench/loadgen.py in its own
process, --clients keep-alive connections, one SST-2 dev sentence a request (from a seeded
sample of --sentences distinct dev sentences).
1. K (--distinct) adapters are stored and the server started. They are random, not trained
   (bench.common.save_random_adapters: N(0, 0.02) weights, a random head), as training K of them
   on this CPU takes minutes; `adapters.kind` in the JSON says so. Each one's answer to every
   sentence is recorded through POST /predict.
2. (a) one task (the first of the K) with the K adapters on disk.
3. Each of the K is downloaded (GET /adapters/{name}/download) and imported under new names
   (PUT /adapters/{name}, one at a time, each timed) until N (--adapters) names are on disk, the
   K originals included; then the idle server's CPU is measured over --idle-seconds.
4. (b) the same one task with N on disk; (c) every request to one of the N names, uniformly at
   random; (d) Zipf(s=1) popularity over the N (the name of each rank drawn at random).
5. Unless --without-10k: imports up to M (--large, 10,000) names, idle CPU again, and (e)
   uniform over the M.
Every case has its own warm-up (--warmup requests), then --requests requests: requests/s, p50/p99
latency, statuses, mismatched answers (an answer must equal, within 1e-4, what the name's
original adapter answered for that sentence in step 1), from GET /metrics around the case: cold
loads (disk reads; those made by a batch rather than the loader thread), device evictions,
lookups by tier and hit ratio (lookups answered from memory / all), adapters on the device when
it started (the preloader fills free memory between cases) and the server's RSS. `targets` holds the
issue's bounds. Then, with the server stopped, the issue's reference (bench/peft_reference.py, unless
--without-peft; needs the `bench` extra): PEFT's mixed-adapter batch (`adapter_names`) over
--peft-adapters LoRA adapters on the same model, in process, batches of 32 of the same sentences.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import httpx

from app.adapters.store import AdapterStore
from app.config import Settings
from app.model.encoder import FrozenEncoder
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
    scrape_metrics,
    setup_logging,
)
from bench.loadgen import Expected, generate, same_answer
from bench.server import Server

HOST = "127.0.0.1"
TEN_K = 10_000
MAX_NAMES = 99_999  # copies are named copy-NNNNN
PREDICT_CHUNK = 32  # sentences per request when recording the expected answers
COLD_LOADS, HOT_PATH_LOADS = "adapter_serve_adapter_cold_loads", "adapter_serve_adapter_hot_path_loads"
EVICTIONS = 'adapter_serve_adapter_evictions_total{tier="device"}'
LOOKUPS = {t: f'adapter_serve_adapter_lookups_total{{tier="{t}"}}' for t in ("device", "host", "disk")}
IN_MEMORY = {t: f'adapter_serve_tier_adapters{{tier="{t}"}}' for t in ("device", "host")}
ON_DEVICE = IN_MEMORY["device"]
RSS, CPU = "process_resident_memory_bytes", "process_cpu_seconds"
STORED = "adapter_serve_adapters_stored"
MIB = 2**20
QUIET_SHARE = 0.05  # of the machine's CPU taken by other processes during a case
IDLE_AFTER_S = 25.0  # from the last change to the idle measurement: 2 x GC_FREEZE_CHECK_S + 5
# What bench/server.py sets for the other benchmarks, put back to the service default here.
DEFAULTED = {"STORE_POLL_SECONDS": "store_poll_seconds", "MAX_QUEUE_ROWS": "max_queue_rows"}


@dataclass
class Case:
    """Traffic of one case: the names requests go to, uniformly or in proportion to weights."""

    name: str
    tasks: list[str]
    weights: list[float] | None = None


# ------------------------------------------------------------------------------------ setup
def server_settings(overrides: list[str]) -> dict[str, str]:
    fields = Settings.model_fields
    settings = {env: str(fields[f].default) for env, f in DEFAULTED.items() if f in fields}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--setting takes KEY=VALUE, got {item!r}")
        settings[key.upper()] = value
    return settings


def sample_texts(data: Path, n: int, seed: int) -> list[str]:
    distinct = list(dict.fromkeys(load_texts(data)))
    return random.Random(seed).sample(distinct, min(n, len(distinct)))


def record_answers(client: httpx.Client, sources: list[str], texts: list[str]
                   ) -> dict[str, dict[str, Any]]:
    """Each source's one prediction for every text, through the API."""
    answers: dict[str, dict[str, Any]] = {}
    for name in sources:
        answers[name] = {}
        for chunk in chunks(texts, PREDICT_CHUNK):
            reply = client.post(f"/predict/{name}", json={"inputs": chunk})
            reply.raise_for_status()
            answers[name].update(zip(chunk, reply.json()["predictions"], strict=True))
    return answers


def distinguishable(answers: dict[str, dict[str, Any]]) -> float:
    """Share of (sentence, pair of sources) whose answers differ: how often an answer routed to
    the wrong source would be caught (copies of one source cannot be told apart)."""
    pairs = [(a, b) for a in answers for b in answers if a < b]
    if not pairs:
        return 1.0
    texts = list(answers[pairs[0][0]])
    same = sum(same_answer(answers[a][t], answers[b][t]) for a, b in pairs for t in texts)
    return round(1 - same / (len(pairs) * len(texts)), 4)


def import_copies(client: httpx.Client, files: dict[str, bytes], source_of: dict[str, str],
                  total: int, seconds: list[float]) -> None:
    """Import copies of the files (in turn) until `total` names are on disk; each import's
    seconds are appended to `seconds` and each new name's source put in `source_of`."""
    sources = list(files)
    for i in range(len(source_of), total):
        name, source = f"copy-{i:05d}", sources[i % len(sources)]
        t0 = time.perf_counter()
        reply = client.put(f"/adapters/{name}", content=files[source],
                           headers={"content-type": "application/octet-stream"})
        seconds.append(time.perf_counter() - t0)
        if reply.status_code != 201:
            raise SystemExit(f"import of {name} failed: {reply.status_code} {reply.text[:300]}")
        source_of[name] = source
        if (i + 1) % 100 == 0:
            log.info("%d names on disk; import p50 so far %.1f ms", i + 1,
                     percentile(seconds, 50) * 1000)


def import_stats(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    tenth = max(1, len(ms) // 10)
    return {"imports": len(ms), "total_s": round(sum(seconds), 1),
            "p50_ms": round(percentile(ms, 50), 1), "p90_ms": round(percentile(ms, 90), 1),
            "max_ms": round(max(ms), 1),
            "p50_first_tenth_ms": round(percentile(ms[:tenth], 50), 1),
            "p50_last_tenth_ms": round(percentile(ms[-tenth:], 50), 1)}


# ---------------------------------------------------------------------------- measurements
def settle(url: str, timeout: float = 900) -> dict[str, Any]:
    """Wait until the preloader has put every stored adapter in memory, or memory is full (no
    growth for a few seconds): the cases measure the steady state. Its seconds are reported."""
    t0, last, still = time.monotonic(), -1.0, 0
    while time.monotonic() - t0 < timeout:
        m = scrape_metrics(url)
        held = m.get(IN_MEMORY["device"], 0) + m.get(IN_MEMORY["host"], 0)
        if held >= m.get(STORED, 0):
            break
        still = still + 1 if held == last else 0
        if still >= 5:
            break
        last = held
        time.sleep(1.0)
    return {"seconds": round(time.monotonic() - t0, 1), "in_memory": held,
            "on_disk": m.get(STORED)}


def idle_cpu(url: str, seconds: float) -> dict[str, Any]:
    """The server's CPU per second of wall time while nothing is sent (two /metrics scrapes),
    once the housekeeping that follows a burst of changes is done (the heap frozen out of
    garbage collection some 10-20 s after the adapters held stop changing)."""
    time.sleep(IDLE_AFTER_S)
    before, t0 = scrape_metrics(url), time.monotonic()
    time.sleep(seconds)
    after, t1 = scrape_metrics(url), time.monotonic()
    return {"adapters_on_disk": after.get(STORED), "seconds": round(t1 - t0, 1),
            "cpu_share_of_a_core": round((after[CPU] - before[CPU]) / (t1 - t0), 4),
            "rss_mib": round(after[RSS] / MIB, 1)}


def load(pool: Pool, port: int, case: Case, texts: list[str], expected: Expected,
         clients: int, requests: int, seed: int) -> dict[str, Any]:
    return pool.apply(generate, (HOST, port, clients, requests, case.tasks, texts, seed,
                                 case.weights, expected))


def delta(before: dict[str, float], after: dict[str, float], name: str) -> int | None:
    return int(after[name] - before[name]) if name in before and name in after else None


def cpu_use(machine: dict[str, Any], server_s: float, loadgen_s: float) -> dict[str, Any]:
    """Cores the server and the load generator used while `machine` (a CpuMonitor's result) was
    measured, and the share of the machine's CPU that other processes took: figures are only
    comparable with others taken while that was near zero."""
    wall, others = machine["wall_s"], machine["others_cpu_s"]
    return {"wall_s": wall, "server_cores": round(server_s / wall, 2),
            "loadgen_cores": round(loadgen_s / wall, 2),
            "others_share": None if others is None else
            round(max(0.0, others - server_s - loadgen_s) / (wall * (os.cpu_count() or 1)), 3)}


def run_cases(server: Server, cases: dict[str, Case], texts: list[str], expected: Expected,
              args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each case warmed up, then --rounds timed runs of each, the cases interleaved round by
    round: load from other processes lands on all of them alike, not on whichever ran during it.
    Every run sends the same sentences in the same order (only the tasks differ)."""
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in cases}
    # One generator process for the warm-ups and the timed runs, started before the timing:
    # its CPU is not the server's, and its start-up falls outside the timed windows.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        for case in cases.values():
            log.info("case %s over %d names: warm-up", case.name, len(case.tasks))
            generator_cpu = load(pool, server.port, case, texts, expected, args.clients,
                                 args.warmup, args.seed + 1)["cpu_s"]
        for r in range(args.rounds):
            for key, case in cases.items():
                before = scrape_metrics(server.url)
                with CpuMonitor() as mon:
                    raw = load(pool, server.port, case, texts, expected, args.clients,
                               args.requests, args.seed)
                after = scrape_metrics(server.url)
                row = case_row(raw, before, after)
                row["cpu"] = cpu_use(mon.result, after[CPU] - before[CPU],
                                     raw["cpu_s"] - generator_cpu)
                generator_cpu = raw["cpu_s"]  # the generator process's total so far
                row["latencies"] = raw["latencies"]
                runs[key].append(row)
                log.info("round %d/%d, case %s: %s req/s, p50 %s ms, p99 %s ms, %s cold loads, "
                         "%d mismatched", r + 1, args.rounds, case.name, row["requests_per_s"],
                         row["p50_ms"], row["p99_ms"], row["cold_loads"], row["mismatched"])
    return {key: combine(rows, len(cases[key].tasks)) for key, rows in runs.items()}


def combine(rows: list[dict[str, Any]], names: int) -> dict[str, Any]:
    """One case's rounds: the median rate, latency percentiles over every request, totals."""
    latencies = [x * 1000 for row in rows for x in row.pop("latencies")]
    rates = [row["requests_per_s"] for row in rows]

    def total(key: str) -> int | None:
        values = [row[key] for row in rows]
        return None if None in values else sum(values)

    statuses: dict[str, int] = {}
    for row in rows:
        for status, n in row["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    lookups = {t: sum(row["lookups"][t] for row in rows) for t in LOOKUPS}
    seen = sum(lookups.values())
    return {
        "names": names, "adapters_on_disk": rows[-1]["adapters_on_disk"],
        "requests_per_s": round(statistics.median(rates), 1), "rounds_requests_per_s": rates,
        "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1),
        "requests": total("requests"), "statuses": statuses, "mismatched": total("mismatched"),
        "cold_loads": total("cold_loads"),
        "cold_loads_on_the_hot_path": total("cold_loads_on_the_hot_path"),
        "evictions": total("evictions"), "lookups": lookups,
        "hit_ratio": round(1 - lookups["disk"] / seen, 4) if seen else None,
        "on_device_at_start": rows[0]["on_device_at_start"], "rss_mib": rows[-1]["rss_mib"],
        "cpu": [row["cpu"] for row in rows],
    }


def case_row(raw: dict[str, Any], before: dict[str, float], after: dict[str, float]
             ) -> dict[str, Any]:
    """A timed run's figures: the generator's `raw` result and the server's metrics around it."""
    lat = [x * 1000 for x in raw["latencies"]]
    requests, loads = sum(raw["statuses"].values()), delta(before, after, COLD_LOADS)
    lookups = {t: delta(before, after, name) or 0 for t, name in LOOKUPS.items()}
    total = sum(lookups.values())
    return {
        "adapters_on_disk": after.get(STORED), "requests": requests,
        "requests_per_s": round(len(lat) / raw["wall"], 1),
        "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
        "statuses": {str(k): v for k, v in raw["statuses"].items()},
        "mismatched": raw["mismatched"], "cold_loads": loads,
        "cold_loads_on_the_hot_path": delta(before, after, HOT_PATH_LOADS),
        "evictions": delta(before, after, EVICTIONS), "lookups": lookups,
        "hit_ratio": round(1 - lookups["disk"] / total, 4) if total else None,
        "on_device_at_start": before.get(ON_DEVICE),
        "rss_mib": round(after[RSS] / MIB, 1),
    }


def zipf(names: list[str], seed: int) -> Case:
    ranked = random.Random(seed).sample(names, len(names))
    return Case("zipf", ranked, [1 / (rank + 1) for rank in range(len(ranked))])


# -------------------------------------------------------------------------------- the run
def run(server: Server, client: httpx.Client, sources: list[str], texts: list[str],
        args: argparse.Namespace) -> dict[str, Any]:
    answers = record_answers(client, sources, texts)
    files = {s: client.get(f"/adapters/{s}/download").raise_for_status().content
             for s in sources}
    source_of = {s: s for s in sources}
    one = Case("one task", sources[:1])
    cases: dict[str, Any] = run_cases(server, {"a_one_task_few_on_disk": one}, texts,
                                      Expected(source_of, answers), args)
    idle = [idle_cpu(server.url, args.idle_seconds)]
    import_seconds: list[float] = []
    import_copies(client, files, source_of, args.adapters, import_seconds)
    preload = [settle(server.url)]
    idle.append(idle_cpu(server.url, args.idle_seconds))
    expected, names = Expected(source_of, answers), list(source_of)
    cases.update(run_cases(server, {"b_one_task_n_on_disk": one,
                                    "c_uniform_n": Case("uniform", names),
                                    "d_zipf_n": zipf(names, args.seed)}, texts, expected, args))
    if not args.without_10k:
        import_copies(client, files, source_of, args.large, import_seconds)
        preload.append(settle(server.url))
        idle.append(idle_cpu(server.url, args.idle_seconds))
        cases.update(run_cases(server, {"e_uniform_m": Case("uniform", list(source_of))}, texts,
                               Expected(source_of, answers), args))
    return {"adapters": {"kind": "random (bench.common.save_random_adapters), not trained",
                         "distinct": len(sources), "file_bytes": len(files[sources[0]]),
                         "answers_distinguishable": distinguishable(answers)},
            "imports": import_stats(import_seconds), "preload_after_imports": preload,
            "idle_cpu": idle, "cases": cases}


def peft_reference(texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """PEFT's mixed LoRA batch on the same sentences, once the server has stopped."""
    if args.without_peft:
        return {"skipped": "--without-peft"}
    try:
        from bench.peft_reference import measure
        log.info("reference: PEFT mixed batches over %d LoRA adapters", args.peft_adapters)
        return measure(texts, args.peft_adapters, batches=16, repeats=2, seed=args.seed)
    except ImportError as exc:
        return {"skipped": f"{exc} (pip install -e '.[bench]')"}


def check(value: float, op: str, bound: float) -> dict[str, Any]:
    ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    return {"value": round(value, 4), "target": f"{op} {bound}", "pass": ok}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    cases = result["cases"]
    a = cases["a_one_task_few_on_disk"]

    def rate(key: str) -> float:
        return cases[key]["requests_per_s"] / a["requests_per_s"]

    out = {
        "b/a requests_per_s": check(rate("b_one_task_n_on_disk"), ">=", 0.95),
        "c/a requests_per_s": check(rate("c_uniform_n"), ">=", 0.90),
        "d/a requests_per_s": check(rate("d_zipf_n"), ">=", 0.95),
        "p99 c/a": check(cases["c_uniform_n"]["p99_ms"] / a["p99_ms"], "<=", 1.5),
    }
    if "e_uniform_m" in cases:
        out["e/a requests_per_s"] = check(rate("e_uniform_m"), ">=", 0.80)
    most = result["idle_cpu"][-1]  # the most adapters on disk measured
    out["idle cpu share of a core"] = {**check(most["cpu_share_of_a_core"], "<", 0.01),
                                       "adapters_on_disk": most["adapters_on_disk"]}
    out["import p50 ms"] = check(result["imports"]["p50_ms"], "<=", 50)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--adapters", type=int, default=1000, help="N: names on disk")
    parser.add_argument("--distinct", type=int, default=8, help="K: distinct adapters")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each case")
    parser.add_argument("--warmup", type=int, default=256, help="warm-up requests per case")
    parser.add_argument("--sentences", type=int, default=256, help="distinct dev sentences")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--without-10k", action="store_true",
                        help="skip (e): importing up to M names, uniform traffic over them")
    parser.add_argument("--large", type=int, default=TEN_K, help="M: names on disk in (e)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting (environment variable); repeatable")
    parser.add_argument("--peft-adapters", type=int, default=64,
                        help="LoRA adapters PEFT holds in the reference (adding one costs O(held))")
    parser.add_argument("--without-peft", action="store_true", help="skip the PEFT reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8768)
    args = parser.parse_args(argv)
    if not 1 <= args.distinct <= args.adapters <= args.large <= MAX_NAMES:
        parser.error(f"need 1 <= --distinct ({args.distinct}) <= --adapters ({args.adapters}) "
                     f"<= --large ({args.large}) <= {MAX_NAMES}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    texts = sample_texts(args.data, args.sentences, args.seed)
    settings = server_settings(args.setting)
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        encoder = FrozenEncoder.load("")
        machine = machine_info(encoder)
        store = AdapterStore(Path(tmp) / "store")
        sources = [f"src-{k}" for k in range(args.distinct)]
        save_random_adapters(store, encoder, sources, seed=args.seed)
        del encoder  # the server loads its own
        with Server(store.root, args.port, settings) as server, \
                httpx.Client(base_url=server.url, timeout=300) as client:
            result = run(server, client, sources, texts, args)
    result["reference_peft"] = peft_reference(texts, args)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    emit({"benchmark": "many_adapters", "machine": machine, "config": config,
          "server_settings": settings, **result, "targets": targets(result),
          # Other processes' CPU use distorts the ratios: trust a missed target only from a
          # quiet run.
          "machine_quiet": all(run["others_share"] is not None
                               and run["others_share"] < QUIET_SHARE
                               for c in result["cases"].values() for run in c["cpu"]),
          "all_answers_right": all(c["mismatched"] == 0 and set(c["statuses"]) == {"200"}
                                   for c in result["cases"].values())})


if __name__ == "__main__":
    main()

"""Ray Serve cluster (issue 17): adapter affinity vs random routing, 2 replicas vs 1, a new
adapter reaching every replica, and a replica killed with kill -9 under load.

    python -m bench.bench_cluster [--quick] [--adapters 1000] [--resident 500] [--clients 64]
        [--requests 4000] [--base-model DIR] [--data ../shared/data]

One Ray node on this machine (`ray.init`, no dashboard), its replicas each the whole service
(bench.common.save_random_adapters: --adapters random adapters, bottleneck 8, in a local
ADAPTERS_DIR the replicas share), MAX_RESIDENT_ADAPTERS=--resident per replica and as many
affinity slots, no preloading, NUM_THREADS = cores / replicas. Traffic: bench/loadgen.py in its
own process, --clients keep-alive connections through Ray Serve's proxy, Zipf(s=1) popularity
over the adapters (the name of each rank drawn at random), one SST-2 dev sentence a request.
Cases, each deployed afresh: (a) 2 replicas with affinity, (b) 2 replicas, Ray's default
routing, (c) 1 replica, (d) `adapter-serve serve` alone (uvicorn, no Ray: the relay's cost).
Each runs --requests/2 warm-up requests, then --requests measured: requests/s, p50/p99, statuses,
and cold loads (disk reads into the bank, summed over the replicas' /metrics) in each part.
On (a) also: the seconds from a training job's success (its finished_at) until both replicas
answer a prediction with the new adapter; then kill -9 of one replica under the same load: the
failed requests (all expected 503 replica_unavailable), the seconds until Ray runs two replicas
again, and the failures among --requests/2 requests after that. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from app.adapters.store import AdapterStore
from app.cluster import probe
from app.cluster.deployment import build_app
from app.cluster.launch import APP_NAME
from app.model.adapter import AdapterConfig
from app.model.encoder import FrozenEncoder
from bench.common import (
    DEFAULT_DATA_DIR,
    emit,
    load_texts,
    log,
    machine_info,
    parse_metrics,
    percentile,
    read_jsonl,
    save_random_adapters,
    setup_logging,
)
from bench.loadgen import generate
from bench.server import Server

HOST = "127.0.0.1"
COLD_LOADS = "adapter_serve_adapter_cold_loads"
CORES = os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Traffic:
    """Zipf(1) over the adapters; each call sends `requests` of it through `port`."""

    def __init__(self, names: list[str], texts: list[str], clients: int) -> None:
        ranked = names[:]
        random.Random(0).shuffle(ranked)
        self.names, self.texts, self.clients = ranked, texts, clients
        self.weights = [1.0 / (rank + 1) for rank in range(len(ranked))]

    def send(self, port: int, requests: int, seed: int) -> dict[str, Any]:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            out: dict[str, Any] = pool.apply(generate, (
                HOST, port, self.clients, requests, self.names, self.texts, seed, self.weights))
        return out

    def start(self, port: int, requests: int, seed: int) -> Any:
        pool = multiprocessing.get_context("spawn").Pool(1)
        pool.apply(int)  # the process is up and has imported this module: the load starts now
        return pool, pool.apply_async(generate, (
            HOST, port, self.clients, requests, self.names, self.texts, seed, self.weights))


def summary(run: dict[str, Any], requests: int) -> dict[str, Any]:
    lat = run["latencies"]
    return {"requests_per_s": round(requests / run["wall"], 1),
            "p50_ms": round(percentile(lat, 50) * 1e3, 1) if lat else None,
            "p99_ms": round(percentile(lat, 99) * 1e3, 1) if lat else None,
            "statuses": run["statuses"]}


def cold_loads(replicas: int) -> int:
    answers = probe.ask_every_replica(APP_NAME, probe.request("GET", "/metrics"), replicas)
    return sum(int(parse_metrics(a.body.decode()).get(COLD_LOADS, 0)) for a in answers.values())


def deploy(replicas: int, affinity: bool, settings: dict[str, Any]) -> None:
    threads = max(1, CORES // replicas)
    serve.run(build_app({"replicas": replicas, "replica_cpus": 1, "affinity": affinity,
                         "settings": {**settings, "num_threads": threads}}),
              name=APP_NAME, route_prefix="/")


def measure(traffic: Traffic, port: int, replicas: int, requests: int) -> dict[str, Any]:
    """Warm-up, then the measured requests; cold loads in each (replicas None: no Ray)."""
    before = cold_loads(replicas)
    warm = traffic.send(port, requests // 2, seed=1)
    middle = cold_loads(replicas)
    run = traffic.send(port, requests, seed=2)
    after = cold_loads(replicas)
    return {**summary(run, requests), "cold_loads": after - middle,
            "warmup": {**summary(warm, requests // 2), "cold_loads": middle - before}}


def job_to_every_replica(url: str, data_dir: Path) -> dict[str, Any]:
    rows = read_jsonl(data_dir / "sst2" / "train.jsonl")[:64]
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/adapters", json={"name": "fresh", "task_type": "classification",
                                      "train": rows, "config": {"epochs": 1}})
        r.raise_for_status()
        job_id = r.json()["job_id"]
        while (job := c.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(0.05)
    assert job["status"] == "succeeded", job
    finished = datetime.fromisoformat(job["finished_at"]).timestamp()
    probe.ask_every_replica(APP_NAME, probe.request("POST", "/predict/fresh",
                                                    {"inputs": ["a fine film"]}), 2)
    return {"seconds_from_success_to_every_replica": round(time.time() - finished, 2),
            "train_seconds": job["result"]["train_seconds"]}


def kill_one_replica(traffic: Traffic, port: int, requests: int) -> dict[str, Any]:
    victim = next(iter(probe.ask_every_replica(APP_NAME, probe.request("GET", "/healthz"), 2)))
    pool, pending = traffic.start(port, requests, seed=3)
    time.sleep(2.0)  # the load is running
    os.kill(probe.replica_pid(victim), signal.SIGKILL)
    killed = time.monotonic()
    for done in (lambda: probe.running_replicas(APP_NAME) < 2,  # Ray has seen it die
                 lambda: probe.running_replicas(APP_NAME) == 2):  # and has replaced it
        while not done() and time.monotonic() - killed < 300:
            time.sleep(0.1)
    replaced = time.monotonic() - killed
    during = pending.get()
    pool.close()
    after = traffic.send(port, requests // 2, seed=4)
    ok = during["statuses"].get(200, 0)
    return {"requests": requests, "failed": requests - ok, "statuses": during["statuses"],
            "seconds_until_replaced": round(replaced, 1),
            "after_replacement": {"requests": requests // 2,
                                  "failed": requests // 2 - after["statuses"].get(200, 0)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 adapters, 100 resident, "
                        "800 requests: a check that it runs")
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--resident", type=int, default=500)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--base-model", default="", help="default: the embedded MiniLM")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.adapters, args.resident, args.requests = 200, 100, 800
    setup_logging()
    # Ray prints its workers' deaths (the kill -9 case) on stdout: keep it for the JSON.
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, \
            contextlib.redirect_stdout(sys.stderr):
        result = run(args, Path(tmp))
    emit(result)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    encoder = FrozenEncoder.load(args.base_model)
    names = [f"zipf-{i:04d}" for i in range(args.adapters)]
    t0 = time.perf_counter()
    save_random_adapters(AdapterStore(root / "store"), encoder, names,
                         config=AdapterConfig(bottleneck_size=8))
    log.info("%d adapters stored in %.0f s", len(names), time.perf_counter() - t0)
    traffic = Traffic(names, load_texts(args.data)[:200], args.clients)
    settings = {"base_model": args.base_model, "adapters_dir": str(root / "store"),
                "max_resident_adapters": args.resident, "cluster_affinity_adapters": args.resident,
                "preload_adapters": False, "log_level": "warning", "max_queue_rows": 100_000}
    result: dict[str, Any] = {
        "machine": machine_info(encoder), "adapters": args.adapters, "resident": args.resident,
        "clients": args.clients, "requests": args.requests, "traffic": "zipf(1)",
        "ray": ray.__version__}
    port = free_port()
    ray.init(num_cpus=max(4, CORES), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": HOST, "port": port})
        cases = {"affinity_2_replicas": (2, True), "random_2_replicas": (2, False),
                 "affinity_1_replica": (1, True)}
        for case, (replicas, affinity) in cases.items():
            log.info("case %s", case)
            deploy(replicas, affinity, settings)
            result[case] = measure(traffic, port, replicas, args.requests)
            log.info("%s: %s", case, result[case])
            if case == "affinity_2_replicas":
                result["new_adapter"] = job_to_every_replica(f"http://{HOST}:{port}", args.data)
                result["kill_9"] = kill_one_replica(traffic, port, args.requests)
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    result["single_server"] = single_server(traffic, settings, args.requests)
    a, r = result["affinity_2_replicas"], result["random_2_replicas"]
    result["ratios"] = {
        "cold_loads_affinity_over_random": round(a["cold_loads"] / max(1, r["cold_loads"]), 3),
        "requests_per_s_2_over_1_replica": round(
            a["requests_per_s"] / result["affinity_1_replica"]["requests_per_s"], 3),
        "requests_per_s_1_replica_over_single_server": round(
            result["affinity_1_replica"]["requests_per_s"]
            / result["single_server"]["requests_per_s"], 3)}
    result["targets"] = {"cold_loads_affinity_over_random": "<= 0.5",
                         "requests_per_s_2_over_1_replica": ">= 0.8",
                         "seconds_from_success_to_every_replica": "<= 5"}
    return result


def single_server(traffic: Traffic, settings: dict[str, Any], requests: int) -> dict[str, Any]:
    """(d): the same service with `adapter-serve serve`, no Ray."""
    log.info("case single_server")
    port = free_port()
    env = {k.upper(): str(v) for k, v in settings.items() if k != "cluster_affinity_adapters"}
    with Server(Path(settings["adapters_dir"]), port, {**env, "NUM_THREADS": str(CORES)}):
        url = f"http://{HOST}:{port}"

        def loads() -> int:
            return int(parse_metrics(httpx.get(f"{url}/metrics").text).get(COLD_LOADS, 0))

        warm = traffic.send(port, requests // 2, seed=1)
        middle = loads()
        run = traffic.send(port, requests, seed=2)
        return {**summary(run, requests), "cold_loads": loads() - middle,
                "warmup": summary(warm, requests // 2)}


if __name__ == "__main__":
    main()

"""The store at scale: start-up, idle polling, GET /adapters and imports with N adapters on disk.

    python -m bench.bench_store [--sizes 1000 10000] [--imports 50] [--idle-seconds 10]

For each N: one random adapter for the embedded MiniLM (bottleneck 24: a 1.0 MB file) is stored,
then copied N times by hand (hard-linked weights, a metadata file per copy), as many imports of
one file would leave the store. Then, with the service's default settings:
- index build: the first start on a store without an index (store + registry, files read);
- start-up: the app's lifespan (encoder load, clean, rescan against the index, first refresh);
- idle: the whole process's CPU over a quiet window (poll every STORE_POLL_SECONDS), and the
  CPU of one poll (registry.refresh with nothing changed) and of one rescan of the files;
- list: GET /adapters?limit=100 through the app (TestClient), at random cursors;
- import: PUT /adapters/<new name> of the 1.0 MB file through the app.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from app.adapters.registry import AdapterRegistry
from app.adapters.store import AdapterStore
from app.adapters.tiers import TierBudgets
from app.config import Settings
from app.constants import INDEX_FILE, METADATA_FILE, WEIGHTS_FILE
from app.main import create_app
from app.model.adapter import AdapterConfig
from app.model.encoder import FrozenEncoder
from app.schemas.adapters import encode_cursor
from bench.common import CpuMonitor, emit, log, machine_info, percentile, save_random_adapters, setup_logging

TARGETS = {"list_p50_ms": 200, "startup_s": 10, "idle_cpu_share": 0.01, "import_p50_ms": 50}


def populate(root: Path, encoder: FrozenEncoder, n: int) -> bytes:
    """N adapters named a00000..., each a copy of one random adapter; returns its file."""
    seed = AdapterStore(root / "seed")
    meta = save_random_adapters(seed, encoder, ["seed"], AdapterConfig(reduction_factor=16))[0]
    weights = seed.weights_path("seed", 1)
    store = root / "store"
    for i in range(n):
        name = f"a{i:05d}"
        version_dir = store / name / "v1"
        version_dir.mkdir(parents=True)
        os.link(weights, version_dir / WEIGHTS_FILE)
        copy = meta.model_copy(update={"name": name})
        (version_dir / METADATA_FILE).write_text(copy.model_dump_json(indent=2))
    return weights.read_bytes()


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Process CPU seconds of one call, the mean over `repeats`."""
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def ms_stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2), "samples": len(ms)}


def first_start(root: Path, encoder: FrozenEncoder) -> dict[str, Any]:
    """Store + registry on a store that has no index yet: the index is built from the files."""
    t0 = time.perf_counter()
    store = AdapterStore(root)
    store.clean_stale()
    registry = AdapterRegistry(store, encoder, TierBudgets(2**34, device_adapters=64))
    registry.refresh(rescan=True)
    built = time.perf_counter() - t0
    poll_cpu = cpu_seconds(registry.refresh, 500)
    rescan_cpu = cpu_seconds(store.rescan, 3)
    store.index.close()
    return {"index_build_s": round(built, 3), "poll_cpu_ms": round(poll_cpu * 1000, 4),
            "rescan_cpu_ms": round(rescan_cpu * 1000, 1), "versions": registry.counts()[1]}


def served(client: TestClient, n: int, data: bytes, args: argparse.Namespace
           ) -> dict[str, Any]:
    rng = random.Random(0)
    cursors = [None] + [encode_cursor(f"a{rng.randrange(n):05d}") for _ in range(args.lists)]
    times = []
    for cursor in cursors:
        t0 = time.perf_counter()
        r = client.get("/adapters", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200 and len(r.json()["adapters"]) <= 100, r.text
    own_start, wall_start = time.process_time(), time.perf_counter()
    time.sleep(args.idle_seconds)  # the app's threads poll meanwhile
    idle = (time.process_time() - own_start) / (time.perf_counter() - wall_start)
    imports = []
    for i in range(args.imports):
        t0 = time.perf_counter()
        r = client.put(f"/adapters/imported{i:03d}", content=data)
        imports.append(time.perf_counter() - t0)
        assert r.status_code == 201, r.text
    listed = client.get("/adapters", params={"prefix": "imported", "limit": 1000}).json()
    assert len(listed["adapters"]) == args.imports
    return {"list_limit_100": ms_stats(times), "idle_process_cpu_share": round(idle, 4),
            "import": ms_stats(imports)}


def measure(encoder: FrozenEncoder, n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        t0 = time.perf_counter()
        data = populate(Path(tmp), encoder, n)
        log.info("N=%d: %d copies written in %.1f s", n, n, time.perf_counter() - t0)
        root = Path(tmp) / "store"
        result: dict[str, Any] = {"adapter_file_bytes": len(data), **first_start(root, encoder)}
        assert result["versions"] == n and (root / INDEX_FILE).exists()
        settings = Settings(base_model="", adapters_dir=root, num_threads=args.threads)
        with CpuMonitor() as cpu:
            t0 = time.perf_counter()
            with TestClient(create_app(settings)) as client:
                result["startup_s"] = round(time.perf_counter() - t0, 3)
                result.update(served(client, n, data, args))
        result["machine"] = cpu.result
    idle = result["poll_cpu_ms"] / 1000 / settings.store_poll_seconds + (
        result["rescan_cpu_ms"] / 1000 / settings.store_rescan_seconds)
    result["idle_cpu_share_of_polls"] = round(idle, 5)
    log.info("N=%d: %s", n, result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--imports", type=int, default=50)
    parser.add_argument("--lists", type=int, default=200, help="GET /adapters calls")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    encoder = FrozenEncoder.load("")
    emit({"benchmark": "store", "base": "embedded MiniLM", "targets": TARGETS,
          "defaults": {k: Settings.model_fields[k].default for k in
                       ("store_poll_seconds", "store_rescan_seconds")},
          "results": {str(n): measure(encoder, n, args) for n in args.sizes},
          **machine_info(encoder)})


if __name__ == "__main__":
    main()

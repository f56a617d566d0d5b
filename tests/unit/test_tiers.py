"""Two memory tiers sized in bytes: LRU in each, pins, the loader off the hot path, preloading,
and copies of an adapter answering exactly what the original answers under eviction."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import torch

from app.adapters.registry import AdapterRegistry, DeviceTierFull
from app.adapters.store import AdapterStore
from app.adapters.tiers import HostAdapter, HostTier, Tier, TierBudgets
from app.config import Settings
from app.errors import InvalidAdapterError
from app.model.encoder import FrozenEncoder
from app.serving.engine import InferenceEngine, Row
from app.tasks.classification import ClassificationResult
from tests.conftest import AdapterFactory

TEXT = "the film was good"
WAIT_S = 30  # an upper bound for the loader threads, never reached when things work


def _registry(store: AdapterStore, encoder: FrozenEncoder, **budgets: int | bool
              ) -> AdapterRegistry:
    registry = AdapterRegistry(store, encoder, TierBudgets(**{"device_bytes": 2**30, **budgets}))
    registry.refresh()
    return registry


def _scores(engine: InferenceEngine, key: tuple[str, int]) -> list[float]:
    feature = engine.encoder.tokenizer.encode([TEXT])[0]
    result = engine.run([Row(key, feature)])[0]
    assert isinstance(result, ClassificationResult), result
    return list(result.scores.values())


def _adapter_bytes(store: AdapterStore, encoder: FrozenEncoder, key: tuple[str, int]) -> int:
    """What one adapter takes in the device tier (its bank slot and its head)."""
    probe = _registry(store, encoder)
    probe.release(probe.acquire(key))
    size = probe.residency().device.bytes
    probe.close()
    return size


def _stored(store: AdapterStore, make_adapter: AdapterFactory, n: int) -> list[tuple[str, int]]:
    return [(make_adapter(store, f"t{i}", seed=i).name, 1) for i in range(n)]


# ------------------------------------------------------------------------------- host tier
def _item(name: str, floats: int) -> HostAdapter:
    """A host-tier entry of `floats` float32s (the tier reads only its key and its bytes)."""
    return HostAdapter((name, 1), None, {"w": torch.zeros(floats)}, {})  # type: ignore[arg-type]


def test_host_tier_keeps_the_most_recently_used_within_its_bytes() -> None:
    tier = HostTier(budget=3 * 400)
    for name in "abc":
        assert tier.put(_item(name, 100))  # 400 bytes each
    assert tier.get(("a", 1)) is not None  # a is now the most recently used
    assert tier.put(_item("d", 100))
    assert ("b", 1) not in tier and ("a", 1) in tier and tier.bytes == 1200
    assert tier.evictions == 1
    assert not tier.put(_item("e", 100), evict=False)  # full: a preload never evicts
    assert not tier.put(_item("huge", 1000))  # larger than the whole tier
    assert len(tier) == 3
    tier.discard(("a", 1))
    assert tier.bytes == 800 and tier.fits(400) and not tier.fits(401)


# ----------------------------------------------------------------------------- device tier
def test_the_device_tier_holds_what_its_bytes_pay_for_least_recently_used_out(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    keys = _stored(store, make_adapter, 4)
    size = _adapter_bytes(store, encoder, keys[0])
    registry = _registry(store, encoder, device_bytes=2 * size)
    engine = InferenceEngine(encoder, registry)
    for key in keys[:3]:
        _scores(engine, key)
    assert registry.resident_keys() == keys[1:3]
    assert registry.residency().device.bytes == 2 * size
    assert registry.stats.device_evictions == 1
    assert registry.tier(keys[0]) is Tier.DISK  # on a CPU there is no host copy


def test_pinned_adapters_are_never_evicted_and_a_full_tier_says_so(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    keys = _stored(store, make_adapter, 3)
    size = _adapter_bytes(store, encoder, keys[0])
    registry = _registry(store, encoder, device_bytes=2 * size)
    first, second = registry.acquire(keys[0]), registry.acquire(keys[1])
    with pytest.raises(DeviceTierFull):
        registry.acquire(keys[2], force=False)
    assert not first.retired and not second.retired and registry.stats.cold_loads == 2
    registry.release(first)
    third = registry.acquire(keys[2], force=False)  # the unpinned one makes room
    assert first.retired and not second.retired
    registry.release(second)
    registry.release(third)


def test_an_adapter_evicted_from_the_device_comes_back_from_the_host_tier_without_a_disk_read(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    keys = _stored(store, make_adapter, 3)
    size = _adapter_bytes(store, encoder, keys[0])
    registry = _registry(store, encoder, device_bytes=size, host_bytes=2**20)
    engine = InferenceEngine(encoder, registry)
    first = {key: _scores(engine, key) for key in keys}
    assert registry.stats.cold_loads == 3
    assert [registry.tier(k) for k in keys] == [Tier.HOST, Tier.HOST, Tier.DEVICE]
    assert {key: _scores(engine, key) for key in keys} == first
    assert registry.stats.cold_loads == 3  # every one came back from host memory
    assert registry.stats.promotions == 6
    assert registry.residency().host.adapters == 3


# ---------------------------------------------------------------------- loader and prefetch
def test_a_request_prefetches_its_adapter_off_the_serving_thread_once(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (key,) = _stored(store, make_adapter, 1)
    registry = _registry(store, encoder)
    reader_threads: list[str] = []
    load = store.load

    def recording_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        reader_threads.append(threading.current_thread().name)
        return load(*args, **kwargs)

    monkeypatch.setattr(store, "load", recording_load)
    futures = [registry.prefetch(key) for _ in range(5)]  # five requests for one cold adapter
    for future in futures:
        assert future is not None
        future.result(WAIT_S)
    assert registry.tier(key) is Tier.DEVICE and registry.prefetch(key) is None
    assert len(reader_threads) == 1 and reader_threads[0].startswith("adapter-loader")
    assert registry.stats.lookups == {Tier.DEVICE: 1, Tier.HOST: 0, Tier.DISK: 5}
    assert registry.stats.hot_path_loads == 0
    registry.close()


def test_a_corrupt_adapter_fails_its_prefetch_and_the_next_request_tries_again(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    (key,) = _stored(store, make_adapter, 1)
    registry = _registry(store, encoder)
    path = store.weights_path(*key)
    good = path.read_bytes()
    path.write_bytes(good[:-8] + b"\x00" * 8)
    future = registry.prefetch(key)
    assert future is not None
    with pytest.raises(InvalidAdapterError, match="checksum mismatch"):
        future.result(WAIT_S)
    path.write_bytes(good)
    retry = registry.prefetch(key)
    assert retry is not None and retry.result(WAIT_S) is None
    registry.close()


def test_preloading_fills_free_memory_newest_first_and_never_evicts(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    keys = _stored(store, make_adapter, 3)
    size = _adapter_bytes(store, encoder, keys[0])
    registry = _registry(store, encoder, device_bytes=2 * size, preload=True)
    assert registry.loader.wait_preloaded(WAIT_S)
    assert sorted(registry.resident_keys()) == keys[1:]  # the two newest
    assert registry.tier(keys[0]) is Tier.DISK and registry.stats.device_evictions == 0

    make_adapter(store, "t1", seed=9)  # a new version supersedes a preloaded one
    registry.refresh()
    assert registry.loader.wait_preloaded(WAIT_S)
    assert sorted(registry.resident_keys()) == [("t1", 2), ("t2", 1)]
    registry.close()


# --------------------------------------------------------------------- copies and eviction
def test_copies_answer_what_their_original_answers_under_concurrent_eviction(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    originals = _stored(store, make_adapter, 2)
    copies: dict[tuple[str, int], tuple[str, int]] = {}
    for i in range(12):
        source = originals[i % 2]
        data = store.weights_path(*source).read_bytes()
        meta = store.import_bytes(f"copy-{i}", data, encoder.info)
        copies[(meta.name, meta.version)] = source
    size = _adapter_bytes(store, encoder, originals[0])
    registry = _registry(store, encoder, device_bytes=3 * size)  # 3 of 14 fit
    engine = InferenceEngine(encoder, registry)
    truth = {key: _scores(engine, key) for key in originals}
    feature = encoder.tokenizer.encode([TEXT])[0]
    rng = random.Random(0)
    batches = [rng.sample(sorted(copies), 4) for _ in range(40)]
    failures: list[str] = []
    done = threading.Event()

    def churn() -> None:  # the loader evicts while batches run
        while not done.is_set():
            for key in sorted(copies):
                future = registry.prefetch(key)
                if future is not None:
                    future.result(WAIT_S)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for batch in batches:
            results = engine.run([Row(key, feature) for key in batch])
            for key, result in zip(batch, results, strict=True):
                assert isinstance(result, ClassificationResult), result
                if list(result.scores.values()) != pytest.approx(truth[copies[key]], abs=1e-6):
                    failures.append(f"{key}: {result.scores} != {truth[copies[key]]}")
    finally:
        done.set()
        churner.join(WAIT_S)
    assert not failures
    assert registry.stats.device_evictions > 0
    registry.close()


# ------------------------------------------------------------------------------- defaults
def test_budgets_on_a_cpu_make_the_bank_the_one_memory_tier(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import memory
    from app.services import tier_budgets

    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    assert tier_budgets(settings, cpu) == TierBudgets(
        device_bytes=5_000, host_bytes=0, device_adapters=settings.max_resident_adapters)
    host_set = settings.model_copy(update={"host_adapter_bytes": 700, "preload_adapters": True})
    assert tier_budgets(host_set, cpu) == TierBudgets(
        device_bytes=700, host_bytes=0, device_adapters=settings.max_resident_adapters,
        preload=True)
    both = host_set.model_copy(update={"device_adapter_bytes": 300, "max_resident_adapters": 0})
    assert tier_budgets(both, cpu) == TierBudgets(device_bytes=300, host_bytes=0, preload=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_copies_from_pinned_host_memory_answer_as_on_the_cpu(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory,
        tiny_model_dir: Path) -> None:
    keys = _stored(store, make_adapter, 3)
    on_cpu = InferenceEngine(encoder, _registry(store, encoder))
    expected = {key: _scores(on_cpu, key) for key in keys}
    gpu = FrozenEncoder.load(str(tiny_model_dir), device="cuda", dtype="float32")
    size = _adapter_bytes(store, gpu, keys[0])
    registry = _registry(store, gpu, device_bytes=size, host_bytes=2**20)
    engine = InferenceEngine(gpu, registry)
    for _ in range(2):  # the second time every adapter comes from the pinned host tier
        for key in keys:
            future = registry.prefetch(key)
            if future is not None:
                future.result(WAIT_S)
            assert _scores(engine, key) == pytest.approx(expected[key], abs=1e-5)
    assert registry.stats.cold_loads == 3 and registry.stats.promotions == 6
    assert all(t.is_pinned() for t in registry.host.get(keys[0]).adapter.values())  # type: ignore[union-attr]
    registry.close()

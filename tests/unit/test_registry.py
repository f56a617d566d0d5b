"""The resident set: LRU eviction and reload, pins that protect in-flight rows, disk changes."""

from __future__ import annotations

import pytest
import torch

from app.adapters.registry import AdapterRegistry
from app.adapters.store import AdapterStore
from app.adapters.tiers import TierBudgets
from app.errors import AdapterNotFoundError
from app.model.encoder import FrozenEncoder
from app.serving.engine import InferenceEngine, Row
from app.tasks.classification import ClassificationResult
from app.tasks.regression import RegressionResult
from tests.conftest import AdapterFactory


def _registry(store: AdapterStore, encoder: FrozenEncoder, capacity: int) -> AdapterRegistry:
    registry = AdapterRegistry(store, encoder, TierBudgets(device_bytes=2**30,
                                                          device_adapters=capacity))
    registry.refresh()
    return registry


def _predict(registry: AdapterRegistry, encoder: FrozenEncoder, key: tuple[str, int]
             ) -> list[float]:
    """The class probabilities for one fixed text."""
    feature = encoder.tokenizer.encode(["the film was good"])[0]
    result = InferenceEngine(encoder, registry).run([Row(key, feature)])[0]
    assert isinstance(result, ClassificationResult)
    return list(result.scores.values())


def _numbers(prediction: object) -> list[float]:
    if isinstance(prediction, ClassificationResult):
        return list(prediction.scores.values())
    assert isinstance(prediction, RegressionResult)
    return [prediction.value]


def test_lru_eviction_and_reload_on_demand(store: AdapterStore, encoder: FrozenEncoder,
                                           make_adapter: AdapterFactory) -> None:
    for i in range(4):
        make_adapter(store, f"t{i}", seed=i)
    registry = _registry(store, encoder, capacity=2)
    first = {f"t{i}": _predict(registry, encoder, (f"t{i}", 1)) for i in range(4)}
    assert registry.resident_keys() == [("t2", 1), ("t3", 1)]
    assert registry.stats.device_evictions == 2 and registry.bank.resident == 2

    assert _predict(registry, encoder, ("t0", 1)) == pytest.approx(first["t0"])  # reloaded
    assert registry.resident_keys() == [("t3", 1), ("t0", 1)]
    assert registry.stats.loads == 5
    _predict(registry, encoder, ("t3", 1))  # a hit moves it to the back
    assert registry.resident_keys() == [("t0", 1), ("t3", 1)]


def test_pinned_adapters_are_not_evicted(store: AdapterStore, encoder: FrozenEncoder,
                                         make_adapter: AdapterFactory) -> None:
    for i in range(3):
        make_adapter(store, f"t{i}", seed=i)
    registry = _registry(store, encoder, capacity=1)
    pinned = registry.acquire(("t0", 1))
    other = registry.acquire(("t1", 1))  # over the cap rather than evicting a pinned one
    assert pinned.slot != other.slot and not pinned.retired
    registry.release(other)
    registry.release(pinned)
    registry.release(registry.acquire(("t2", 1)))
    assert registry.resident_keys() == [("t2", 1)]


def test_a_batch_over_more_adapters_than_the_device_tier_holds_is_split_and_answered(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        make_adapter(store, f"t{i}", seed=i)
    alone = {f"t{i}": _predict(_registry(store, encoder, capacity=4), encoder, (f"t{i}", 1))
             for i in range(3)}
    registry = _registry(store, encoder, capacity=2)
    passes: list[int] = []  # adapters on the device during each forward pass
    forward = encoder.forward

    def counting(batch, routing=None):  # type: ignore[no-untyped-def]
        passes.append(registry.bank.resident)
        return forward(batch, routing)

    monkeypatch.setattr(encoder, "forward", counting)
    feature = encoder.tokenizer.encode(["the film was good"])[0]
    rows = [Row((f"t{i % 3}", 1), feature) for i in range(6)]  # one batch over three adapters
    results = InferenceEngine(encoder, registry).run(rows)
    for row, result in zip(rows, results, strict=True):
        assert _numbers(result) == pytest.approx(alone[row.key[0]], rel=1e-5)
    assert passes == [2, 2]  # two adapters, then the third beside the least recently used
    assert registry.bank.resident <= 2


def test_an_adapter_larger_than_the_device_tier_is_served_over_budget_with_a_warning(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    make_adapter(store, "t", seed=1)
    make_adapter(store, "u", seed=2)
    registry = AdapterRegistry(store, encoder, TierBudgets(device_bytes=1))
    registry.refresh()
    for _ in range(3):  # each one evicts the other, then goes in over the budget
        assert _predict(registry, encoder, ("t", 1)) != _predict(registry, encoder, ("u", 1))
    assert registry.stats.device_evictions == 5
    warnings = [r for r in caplog.records if "exceeding it for now" in r.getMessage()]
    assert len(warnings) == 1  # once a minute, not at every batch


def test_delete_while_pinned_frees_the_slot_only_after_release(
        store: AdapterStore, encoder: FrozenEncoder, make_adapter: AdapterFactory) -> None:
    make_adapter(store, "t")
    registry = _registry(store, encoder, capacity=4)
    entry = registry.acquire(("t", 1))
    registry.delete("t")
    assert entry.retired and registry.bank.resident == 1  # still usable by its batch
    registry.release(entry)
    assert registry.bank.resident == 0
    with pytest.raises(AdapterNotFoundError, match="no adapter named 't'"):
        registry.resolve("t")


def test_changes_made_on_disk_are_picked_up(store: AdapterStore, encoder: FrozenEncoder,
                                            make_adapter: AdapterFactory) -> None:
    make_adapter(store, "t", seed=1)
    registry = _registry(store, encoder, capacity=4)
    v1 = _predict(registry, encoder, registry.resolve("t"))

    other = AdapterStore(store.root)  # another process writing into the same directory
    make_adapter(other, "t", seed=2)
    make_adapter(other, "new", seed=3)
    assert registry.refresh()
    assert registry.resolve("t") == ("t", 2) and registry.resolve("new") == ("new", 1)
    assert registry.resident_keys() == []  # v1 was superseded, so it was let go
    assert _predict(registry, encoder, ("t", 2)) != pytest.approx(v1)
    assert _predict(registry, encoder, ("t", 1)) == pytest.approx(v1)  # pinned version

    other.delete("t", 2)
    assert registry.refresh() and registry.resolve("t") == ("t", 1)
    assert not registry.refresh()  # nothing changed since


def test_resolve_names_what_is_missing(store: AdapterStore, encoder: FrozenEncoder,
                                       make_adapter: AdapterFactory) -> None:
    make_adapter(store, "t")
    registry = _registry(store, encoder, capacity=4)
    with pytest.raises(AdapterNotFoundError, match=r"'t' has no version 7 \(it has \[1\]\)"):
        registry.resolve("t", 7)


@torch.inference_mode()
def test_engine_mixed_tasks_equal_one_at_a_time(store: AdapterStore, encoder: FrozenEncoder,
                                                make_adapter: AdapterFactory) -> None:
    from app.tasks import HeadConfig

    make_adapter(store, "cls", seed=1)
    make_adapter(store, "reg", seed=2, head=HeadConfig(task_type="regression"))
    registry = _registry(store, encoder, capacity=4)
    engine = InferenceEngine(encoder, registry)
    texts = ["the film was good", "bad", "john visited paris today", "not very fun at all"]
    keys = [("cls", 1), ("reg", 1), ("reg", 1), ("cls", 1)]
    feats = encoder.tokenizer.encode(texts)
    mixed = engine.run([Row(k, f) for k, f in zip(keys, feats, strict=True)])
    for key, feat, out in zip(keys, feats, mixed, strict=True):
        alone = engine.run([Row(key, feat)])[0]
        assert _numbers(alone) == pytest.approx(_numbers(out), rel=1e-4, abs=1e-6)
    assert isinstance(mixed[0], ClassificationResult) and isinstance(mixed[1], RegressionResult)


def test_metadata_is_cached_until_the_version_changes(store: AdapterStore, encoder: FrozenEncoder,
                                                      make_adapter: AdapterFactory) -> None:
    import json

    make_adapter(store, "t")
    registry = _registry(store, encoder, capacity=4)
    assert registry.metadata(("t", 1)).description == ""
    path = store.root / "t" / "v1" / "adapter.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "description": "edited"}))
    assert registry.metadata(("t", 1)).description == ""  # served from memory
    weights = store.weights_path("t", 1)
    weights.write_bytes(weights.read_bytes())  # replaced on disk: a new stamp
    import os
    os.utime(weights, ns=(1, 1))
    assert not registry.refresh()  # a change by hand: the index has not seen it...
    assert registry.refresh(rescan=True)  # ...until the files are rescanned
    assert registry.metadata(("t", 1)).description == "edited"

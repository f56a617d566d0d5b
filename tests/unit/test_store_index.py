"""The store's index: rebuilt from the files, followed by pollers without rescans, repaired by one."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from app.adapters import index_sql
from app.adapters.index import NameSummary, StoreIndex
from app.adapters.registry import AdapterRegistry
from app.adapters.store import AdapterStore
from app.adapters.tiers import TierBudgets
from app.constants import INDEX_FILE
from app.model.encoder import FrozenEncoder
from app.tasks import HeadConfig
from tests.conftest import AdapterFactory


class Crash(BaseException):
    """The process dies here (not an error anything may catch)."""


def _fill(store: AdapterStore, make_adapter: AdapterFactory) -> list[NameSummary]:
    make_adapter(store, "b", seed=1)
    make_adapter(store, "b", seed=2)
    make_adapter(store, "a", seed=3, head=HeadConfig(task_type="regression"))
    make_adapter(store, "c", seed=4)
    store.delete("c")
    make_adapter(store, "c", seed=5)
    return store.page()


def _registry(store: AdapterStore, encoder: FrozenEncoder) -> AdapterRegistry:
    registry = AdapterRegistry(store, encoder, TierBudgets(2**30))
    registry.refresh()
    return registry


def _no_full_scan(store: AdapterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def scan() -> None:
        raise AssertionError("a full scan of the files")
    monkeypatch.setattr(store, "snapshot", scan)


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif how == "garbage":
        path.write_bytes(b"this is not a database" * 300)
    elif how == "other format":
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA user_version = 99")


@pytest.mark.parametrize("how", ["deleted", "garbage", "other format"])
@pytest.mark.parametrize("reader", ["same process", "restarted"])
def test_index_rebuilt_from_the_files_gives_the_same_listing(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder, how: str,
        reader: str) -> None:
    listing = _fill(store, make_adapter)
    assert [(a.name, a.versions, a.task_type) for a in listing] == [
        ("a", [1], "regression"), ("b", [1, 2], "classification"), ("c", [1], "classification")]
    registry = _registry(store, encoder)
    store.index.close()
    _damage(store.root / INDEX_FILE, how)

    again = store if reader == "same process" else AdapterStore(store.root)
    assert again.page() == listing
    assert _registry(again, encoder).names() == registry.names() == {
        "a": [1], "b": [1, 2], "c": [1]}
    assert not registry.refresh()  # a rebuilt index is a new epoch: re-read, nothing differs


def test_a_version_another_process_writes_appears_without_a_rescan(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_adapter(store, "t", seed=1)
    registry = _registry(store, encoder)
    other = AdapterStore(store.root)  # what a training worker or the CLI opens
    _no_full_scan(store, monkeypatch)
    assert not registry.refresh()  # nothing changed: one query

    make_adapter(other, "t", seed=2)
    make_adapter(other, "new", seed=3)
    assert registry.refresh()
    assert registry.names() == {"new": [1], "t": [1, 2]}
    other.delete("t", 1)
    assert registry.refresh() and registry.names() == {"new": [1], "t": [2]}
    assert not registry.refresh()


def test_a_poller_far_behind_reads_everything_once(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_sql, "KEEP_CHANGES", 2)
    make_adapter(store, "t", seed=1)
    registry = _registry(store, encoder)
    for seed in range(2, 6):
        make_adapter(store, "t", seed=seed)
    store.delete("t", 1)
    assert registry.refresh() and registry.versions("t") == [2, 3, 4, 5]


def test_a_version_copied_into_place_by_hand_appears_after_the_rescan(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder) -> None:
    make_adapter(store, "t", seed=1)
    registry = _registry(store, encoder)
    shutil.copytree(store.root / "t" / "v1", store.root / "t" / "v2")
    shutil.copytree(store.root / "t" / "v1", store.root / "copied" / "v1")
    assert not registry.refresh()  # the index has not seen them
    assert registry.refresh(rescan=True)
    assert registry.names() == {"copied": [1], "t": [1, 2]}
    assert [(a.name, a.versions) for a in store.page()] == [("copied", [1]), ("t", [1, 2])]
    registry.release(registry.acquire(("copied", 1)))
    assert registry.resident_keys() == [("copied", 1)]
    shutil.rmtree(store.root / "copied")
    assert registry.refresh(rescan=True) and registry.names() == {"t": [1, 2]}
    assert registry.resident_keys() == []  # let go under its own key, not its original's


def test_a_crash_between_rename_and_index_update_is_repaired(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_adapter(store, "t", seed=1)
    make_adapter(store, "gone", seed=2)

    def crash(*args: object) -> None:
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(StoreIndex, "put", crash)
        patched.setattr(StoreIndex, "remove", crash)
        with pytest.raises(Crash):
            make_adapter(store, "t", seed=3)
        with pytest.raises(Crash):
            store.delete("gone")
    assert store.versions("t") == [1, 2] and store.versions("gone") == []  # on disk
    assert [(a.name, a.versions) for a in store.page()] == [("gone", [1]), ("t", [1])]

    restarted = AdapterStore(store.root)  # what Services.build does: clean, then rescan
    restarted.clean_stale()
    registry = AdapterRegistry(restarted, encoder, TierBudgets(2**30))
    assert registry.refresh(rescan=True)
    assert registry.names() == {"t": [1, 2]}
    assert [(a.name, a.versions) for a in restarted.page()] == [("t", [1, 2])]
    assert restarted.load("t", 2, encoder.info).meta.version == 2


def test_a_rescan_never_undoes_a_writer_that_overtook_it(
        store: AdapterStore, make_adapter: AdapterFactory, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Another process saves and deletes between the rescan's look at the files and its write."""
    make_adapter(store, "old", seed=1)
    other = AdapterStore(store.root)
    real_snapshot = store.snapshot

    def snapshot_then_others_write() -> dict[tuple[str, int], tuple[int, int]]:
        seen = real_snapshot()
        make_adapter(other, "new", seed=2)  # indexed by its writer; not in `seen`
        other.delete("old")  # in `seen`; gone now
        return seen

    monkeypatch.setattr(store, "snapshot", snapshot_then_others_write)
    store.rescan()
    assert [a.name for a in store.page()] == ["new"]


def test_page_limits_prefixes_and_cursors(store: AdapterStore, make_adapter: AdapterFactory
                                          ) -> None:
    for name in ["ab", "a-b", "b", "aa", "a_c"]:
        make_adapter(store, name)
    assert [a.name for a in store.page()] == ["a-b", "a_c", "aa", "ab", "b"]
    assert [a.name for a in store.page(limit=2)] == ["a-b", "a_c"]
    assert [a.name for a in store.page(after="a_c", limit=2)] == ["aa", "ab"]
    assert [a.name for a in store.page(prefix="a")] == ["a-b", "a_c", "aa", "ab"]
    assert [a.name for a in store.page(after="aa", prefix="a")] == ["ab"]
    assert store.page(after="b") == []
    assert os.path.exists(store.root / INDEX_FILE)


# Saves `count` copies of adapter "t" v1 under the name argv[2], from a process of its own.
WRITER = """
import sys
from pathlib import Path
from safetensors.torch import load
from app.adapters.store import AdapterStore

store = AdapterStore(Path(sys.argv[1]))
meta = store.metadata("t", 1).model_copy(update={"name": sys.argv[2], "weights_sha256": ""})
tensors = load(store.weights_bytes("t", 1))
for _ in range(int(sys.argv[3])):
    store.save(meta, tensors)
"""


@pytest.mark.slow
def test_writers_in_other_processes_are_followed_without_a_rescan(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    make_adapter(store, "t")
    registry = _registry(store, encoder)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), name, "5"],
                                cwd=Path(__file__).resolve().parents[2]) for name in "xyz"]
    assert [w.wait(120) for w in writers] == [0, 0, 0]
    _no_full_scan(store, monkeypatch)
    assert registry.refresh()
    assert registry.names() == {"t": [1], **{n: [1, 2, 3, 4, 5] for n in "xyz"}}
    assert [(a.name, a.versions) for a in store.page()] == [
        ("t", [1]), *[(n, [1, 2, 3, 4, 5]) for n in "xyz"]]

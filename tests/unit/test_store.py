"""The adapter store: round trip, versions, atomic writes, and validation that names the fault."""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save

from app.adapters import store as store_module
from app.adapters.format import join, new_metadata
from app.adapters.store import AdapterStore
from app.constants import METADATA_FILE, WEIGHTS_FILE
from app.errors import (
    AdapterNotFoundError,
    IncompatibleAdapterError,
    InvalidAdapterError,
    InvalidNameError,
    StoreWriteError,
)
from app.model.adapter import AdapterConfig
from app.model.encoder import BaseModelInfo, FrozenEncoder
from app.tasks import HeadConfig
from tests.conftest import AdapterFactory, random_adapter


def test_round_trip_keeps_every_tensor_and_field(store: AdapterStore, encoder: FrozenEncoder
                                                 ) -> None:
    adapter, head, head_cfg = random_adapter(encoder, AdapterConfig(placement="houlsby"))
    meta = new_metadata("sentiment", head_cfg, adapter.config, encoder.info, {"accuracy": 0.9})
    stored = store.save(meta, join(adapter.state_dict(), head.state_dict()))
    assert stored.version == 1 and len(stored.weights_sha256) == 64

    loaded = store.load("sentiment", 1, encoder.info)
    assert loaded.meta == stored
    assert loaded.meta.metrics == {"accuracy": 0.9}
    for k, v in adapter.state_dict().items():
        assert torch.equal(loaded.adapter[k], v)
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.head[k], v)
    on_disk = json.loads((store.root / "sentiment" / "v1" / METADATA_FILE).read_text())
    assert on_disk["base_model"]["fingerprint"] == encoder.info.fingerprint
    assert on_disk["format_version"] == 1


def test_saving_again_creates_a_new_version(store: AdapterStore, make_adapter: AdapterFactory
                                            ) -> None:
    assert [make_adapter(store, "t", seed=s).version for s in range(3)] == [1, 2, 3]
    assert store.versions("t") == [1, 2, 3]
    assert store.delete("t", 2) == [2]
    assert store.versions("t") == [1, 3]
    assert make_adapter(store, "t").version == 4
    assert store.delete("t") == [1, 3, 4]
    assert store.names() == []
    with pytest.raises(AdapterNotFoundError):
        store.delete("t")


def _delete(store: AdapterStore, version: int | None = None) -> list[int]:
    """Delete adapter "t" (or one version); [] where another delete took everything first."""
    try:
        return store.delete("t", version)
    except AdapterNotFoundError:
        return []


def test_concurrent_deletes_remove_each_version_once(store: AdapterStore,
                                                     make_adapter: AdapterFactory) -> None:
    """Deletes racing for one name: each version is removed by exactly one of them, the others
    find nothing (404), and none fails otherwise (it used to, by luck now and then:
    FileNotFoundError, a 500; the test below loses that race every time)."""
    for _ in range(10):
        for seed in range(3):
            make_adapter(store, "t", seed=seed)
        with ThreadPoolExecutor(6) as pool:
            removed = list(pool.map(lambda v: _delete(store, v), [None, 2, None, 1, None, None]))
        assert sorted(v for r in removed for v in r) == [1, 2, 3]
        assert store.names() == []


# ------------------------------------------------- a delete removes the name meanwhile, every time
WAIT_S = 30.0  # bounds every wait below, so a race that goes wrong fails instead of hanging
LISTING = [(os, "scandir"), (os, "listdir")]  # listdir: what Path.iterdir lists with
Victim = Callable[[AdapterStore, AdapterFactory], object]


def _lose_race_to_a_delete(monkeypatch: pytest.MonkeyPatch, store: AdapterStore,
                           victim: Callable[[], object], pause_in: list[tuple[Any, str]],
                           nth: int, after: bool) -> object:
    """Run `victim` in a thread and stop it at its `nth` call, on the directory of adapter "t",
    of the functions in `pause_in` (before the call, or after it when `after`); delete "t"
    meanwhile, to the end, then let the victim go on. Returns what the victim returned."""
    name_dir = store.root / "t"
    in_victim, calls = threading.local(), itertools.count(1)
    paused, reached, deleted = threading.Event(), threading.Event(), threading.Event()

    def wait_for_the_delete() -> None:
        paused.set()
        reached.set()
        assert deleted.wait(WAIT_S), "the delete did not finish"

    def pausing(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            hit = (getattr(in_victim, "yes", False) and isinstance(path, (str, os.PathLike))
                   and Path(path) == name_dir and next(calls) == nth)
            if hit and not after:
                wait_for_the_delete()
            try:
                return real(path, *args, **kwargs)
            finally:
                if hit and after:
                    wait_for_the_delete()
        return call

    def run_victim() -> object:
        in_victim.yes = True
        try:
            return victim()
        finally:
            reached.set()

    for owner, attr in pause_in:
        monkeypatch.setattr(owner, attr, pausing(getattr(owner, attr)))
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(run_victim)
        try:
            assert reached.wait(WAIT_S) and paused.is_set(), "the victim never reached the pause"
            store.delete("t")
            assert not name_dir.exists()
        finally:
            deleted.set()
        return result.result(WAIT_S)


@pytest.mark.parametrize(("victim", "pause_in", "nth", "after", "expected", "left"), [
    pytest.param(lambda s, m: s.versions("t"), LISTING, 1, False, [], [], id="versions"),
    pytest.param(lambda s, m: s.names(), LISTING, 1, False, ["a"], [], id="names"),
    pytest.param(lambda s, m: list(s.snapshot()), LISTING, 1, False, [("a", 1)], [],
                 id="snapshot"),
    pytest.param(lambda s, m: _delete(s), LISTING, 1, False, [], [], id="delete-404"),
    # Its own version gone, delete lists the rest to see whether the name is empty now.
    pytest.param(lambda s, m: _delete(s, 1), LISTING, 2, False, [1], [], id="delete-tail"),
    pytest.param(lambda s, m: s.clean_stale(), LISTING, 1, False, None, [], id="clean_stale"),
    # Renamed into place, then the name directory is fsync'ed: the version was stored.
    pytest.param(lambda s, m: m(s, "t", seed=3).version, [(store_module, "_fsync_dir")], 1,
                 False, 3, [], id="save-after-rename"),
    # mkdir finds the name directory there (EEXIST), which is gone when exist_ok checks it.
    pytest.param(lambda s, m: m(s, "t", seed=3).version, [(os, "mkdir")], 1, True, 1, [1],
                 id="save-making-the-name"),
])
def test_name_removed_by_a_concurrent_delete_meanwhile(
        store: AdapterStore, make_adapter: AdapterFactory, monkeypatch: pytest.MonkeyPatch,
        victim: Victim, pause_in: list[tuple[Any, str]], nth: int, after: bool,
        expected: object, left: list[int]) -> None:
    """Each store operation, stopped at the moment a delete removing the whole name hurts it
    most: it sees the name as it is after the delete, and fails with nothing else (it used to:
    FileNotFoundError out of the store, a 500)."""
    make_adapter(store, "a")
    make_adapter(store, "t", seed=1)
    make_adapter(store, "t", seed=2)
    assert _lose_race_to_a_delete(monkeypatch, store, lambda: victim(store, make_adapter),
                                  pause_in, nth, after) == expected
    assert store.versions("t") == left
    assert store.names() == (["a", "t"] if left else ["a"])


def test_crash_mid_write_leaves_previous_version(store: AdapterStore,
                                                 make_adapter: AdapterFactory,
                                                 encoder: FrozenEncoder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    make_adapter(store, "t", seed=1)
    real_write = store_module._write_file

    def crash_after_weights(path: Path, data: bytes) -> None:
        if path.name == METADATA_FILE:
            path.write_bytes(data[: len(data) // 2])  # half a file, then the "power cut"
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(store_module, "_write_file", crash_after_weights)
    with pytest.raises(StoreWriteError, match="No space left on device; nothing was stored"):
        make_adapter(store, "t", seed=2)
    assert store.versions("t") == [1]
    assert store.load("t", 1, encoder.info).meta.version == 1
    assert [p.name for p in (store.root / "t").iterdir()] == ["v1"]  # no temporary left


def test_stale_temporary_directories_are_invisible_and_cleaned(store: AdapterStore,
                                                               make_adapter: AdapterFactory
                                                               ) -> None:
    make_adapter(store, "t")
    tmp = store.root / "t" / ".tmp-crashed"
    tmp.mkdir()
    (tmp / WEIGHTS_FILE).write_bytes(b"partial")
    os.utime(tmp, (0, 0))
    assert store.versions("t") == [1]
    store.clean_stale()
    assert not tmp.exists()


@pytest.mark.parametrize("name", ["", "UPPER", "../etc", "a/b", ".hidden", "x" * 65, "a.b",
                                  "-lead", "sp ace"])
def test_invalid_names_are_refused(store: AdapterStore, name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid adapter name"):
        store.versions(name)


def test_symlink_out_of_the_store_is_refused(store: AdapterStore, tmp_path: Path) -> None:
    store.root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (store.root / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidNameError, match="outside the store"):
        store.versions("evil")


# ------------------------------------------------------------------------ damaged files
def _damage(store: AdapterStore, name: str, how: str) -> None:
    weights = store.root / name / "v1" / WEIGHTS_FILE
    meta_path = store.root / name / "v1" / METADATA_FILE
    data = weights.read_bytes()
    meta = json.loads(meta_path.read_text())
    if how == "flipped byte":
        weights.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
        return
    if how == "truncated":
        data = data[: len(data) - 100]
    elif how == "nan":
        tensors = _tensors(data)
        tensors["adapter.layers.0.ffn.up.weight"][0, 0] = float("nan")
        data = st_save(tensors, metadata=_header_meta(data))
    elif how == "wrong shape":
        tensors = _tensors(data)
        tensors["adapter.layers.0.ffn.down.weight"] = torch.zeros(3, 32)
        data = st_save(tensors, metadata=_header_meta(data))
    elif how == "missing tensor":
        tensors = _tensors(data)
        del tensors["head.out.bias"]
        data = st_save(tensors, metadata=_header_meta(data))
    elif how == "wrong dtype":
        tensors = _tensors(data)
        tensors["head.out.bias"] = tensors["head.out.bias"].double()
        data = st_save(tensors, metadata=_header_meta(data))
    elif how == "huge header":
        data = struct.pack("<Q", 1 << 40) + data[8:]
    elif how == "not safetensors":
        data = b"\x80\x04pickle"
    weights.write_bytes(data)
    meta["weights_sha256"] = __import__("hashlib").sha256(data).hexdigest()
    meta_path.write_text(json.dumps(meta))


def _tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return {k: v.clone() for k, v in load(data).items()}


def _header_meta(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])["__metadata__"]


@pytest.mark.parametrize(("how", "message"), [
    ("flipped byte", "checksum mismatch"),
    ("truncated", "truncated"),
    ("nan", r"tensor adapter.layers.0.ffn.up.weight has 1 non-finite values"),
    ("wrong shape", r"adapter.layers.0.ffn.down.weight has shape \(3, 32\), expected \(4, 32\)"),
    ("missing tensor", r"missing \['head.out.bias'\]"),
    ("wrong dtype", "has dtype F64, expected F32"),
    ("huge header", "exceeds the limit"),
    ("not safetensors", "not a valid safetensors"),
])
def test_damaged_files_are_refused_with_the_reason(store: AdapterStore,
                                                   make_adapter: AdapterFactory,
                                                   encoder: FrozenEncoder, how: str,
                                                   message: str) -> None:
    make_adapter(store, "t")
    _damage(store, "t", how)
    with pytest.raises(InvalidAdapterError, match=message):
        store.load("t", 1, encoder.info)


def test_adapter_of_another_base_is_incompatible(store: AdapterStore, encoder: FrozenEncoder,
                                                 make_adapter: AdapterFactory) -> None:
    make_adapter(store, "t")
    other = BaseModelInfo(**{**encoder.info.as_dict(), "name": "bert-base-uncased",
                             "fingerprint": "f" * 64})
    with pytest.raises(IncompatibleAdapterError, match="trained on base .*tiny-bert.*runs "
                                                       "'bert-base-uncased'"):
        store.load("t", 1, other)
    wider = BaseModelInfo(**{**encoder.info.as_dict(), "hidden_size": 64})
    with pytest.raises(IncompatibleAdapterError, match="hidden size 32 and 2 layers"):
        store.load("t", 1, wider)


def test_import_of_a_downloaded_file_creates_a_version(store: AdapterStore,
                                                       make_adapter: AdapterFactory,
                                                       encoder: FrozenEncoder) -> None:
    make_adapter(store, "src", head=HeadConfig(task_type="regression"))
    data = store.weights_path("src", 1).read_bytes()
    meta = store.import_bytes("copy", data, encoder.info)
    assert (meta.name, meta.version, meta.task_type) == ("copy", 1, "regression")
    assert store.load("copy", 1, encoder.info).meta.weights_sha256 == meta.weights_sha256


def test_import_keeps_the_tensor_bytes_and_embeds_the_new_name(
        store: AdapterStore, make_adapter: AdapterFactory, encoder: FrozenEncoder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An import rewrites only the header: no re-encoding, and a file that imports again."""
    make_adapter(store, "src")
    make_adapter(store, "copy", seed=5)
    data = store.weights_path("src", 1).read_bytes()
    monkeypatch.setattr(store_module.fmt, "encode", None)  # would fail if called
    meta = store.import_bytes("copy", data, encoder.info)
    stored = store.weights_path("copy", 2).read_bytes()

    (n_src,), (n_new,) = struct.unpack("<Q", data[:8]), struct.unpack("<Q", stored[:8])
    assert stored[8 + n_new:] == data[8 + n_src:] and (8 + n_new) % 8 == 0
    embedded = json.loads(_header_meta(stored)["adapter_serve"])
    assert (embedded["name"], embedded["version"]) == ("copy", 2) == (meta.name, meta.version)
    assert __import__("hashlib").sha256(stored).hexdigest() == meta.weights_sha256
    loaded = store.load("copy", 2, encoder.info)  # checksum, header, shapes, finiteness
    source = store.load("src", 1, encoder.info)
    for key, tensor in source.adapter.items():
        assert torch.equal(loaded.adapter[key], tensor)
    assert store.import_bytes("again", stored, encoder.info).version == 1

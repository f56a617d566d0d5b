"""What every store backend promises, run against each (a local directory, S3 through moto):
versions visible whole or not at all, concurrent writers on distinct versions, corrupt files
refused, deletes, changes seen by polling in O(changes), and nodes that never serve a version
another node deleted or replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from app.adapters.index import Generation
from app.adapters.storage import Store
from app.errors import AdapterNotFoundError, InvalidAdapterError
from app.model.encoder import FrozenEncoder
from app.tasks import HeadConfig
from tests.conftest import AdapterFactory
from tests.unit.backends import Backend, LocalBackend, S3Backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return LocalBackend(str(tmp_path / "store"), tmp_path / "nodes")
    return S3Backend(request.getfixturevalue("s3_url"), tmp_path / "nodes")


def _started(backend: Backend, node: int = 0) -> Store:
    """A store as a service opens it: checked, cleaned, its index read."""
    store = backend.store(node)
    store.open()
    store.clean_stale()
    store.rescan()
    return store


def _assert_same_tensors(store: Store, a: tuple[str, int], b: tuple[str, int],
                         encoder: FrozenEncoder) -> None:
    first, second = store.load(*a, encoder.info), store.load(*b, encoder.info)
    for name, tensor in first.adapter.items():
        torch.testing.assert_close(second.adapter[name], tensor)


def test_round_trip_listing_and_import(backend: Backend, make_adapter: AdapterFactory,
                                       encoder: FrozenEncoder) -> None:
    store = _started(backend)
    saved = [make_adapter(store, "sentiment", seed=s) for s in (1, 2)]
    make_adapter(store, "similarity", seed=3, head=HeadConfig(task_type="regression"))
    assert [m.version for m in saved] == [1, 2] and store.versions("sentiment") == [1, 2]
    assert store.names() == ["sentiment", "similarity"]
    loaded = store.load("sentiment", 2, encoder.info)
    assert loaded.meta == saved[1] == store.metadata("sentiment", 2)

    imported = store.import_bytes("copy", store.weights_path("sentiment", 2).read_bytes(),
                                  encoder.info)
    assert (imported.name, imported.version) == ("copy", 1)
    _assert_same_tensors(store, ("sentiment", 2), ("copy", 1), encoder)
    store.changes_since(Generation())
    assert [(a.name, a.versions, a.task_type) for a in store.page()] == [
        ("copy", [1], "classification"), ("sentiment", [1, 2], "classification"),
        ("similarity", [1], "regression")]
    assert store.where("copy", 1).startswith(backend.location)


def test_a_version_is_visible_whole_or_not_at_all(backend: Backend, make_adapter: AdapterFactory,
                                                  encoder: FrozenEncoder,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed between its objects (files) leaves nothing anyone sees, and nothing
    once the store is cleaned."""
    store = _started(backend)
    make_adapter(store, "t", seed=1)
    backend.write_without_marker(("t", 2), store.weights_path("t", 1).read_bytes())

    restarted = _started(backend, node=1)
    assert restarted.versions("t") == [1] and restarted.names() == ["t"]
    assert [(a.name, a.versions) for a in restarted.page()] == [("t", [1])]
    with pytest.raises(AdapterNotFoundError):
        restarted.load("t", 2, encoder.info)
    after = make_adapter(restarted, "t", seed=2).version  # never the half-written one's files
    assert store.versions("t") == [1, after]
    assert restarted.load("t", after, encoder.info).meta.version == after

    # An object store cannot tell a dead writer's objects from a live one's but by their age.
    monkeypatch.setattr("app.adapters.s3.store.STALE_WRITE_S", 0.0)
    restarted.clean_stale()
    backend_again = _started(backend, node=2)
    assert backend_again.versions("t") == [1, after]
    assert make_adapter(backend_again, "t", seed=3).version > after


def test_concurrent_writers_get_distinct_versions(backend: Backend, make_adapter: AdapterFactory,
                                                  encoder: FrozenEncoder) -> None:
    """Two nodes, three threads each, saving the same name at once."""
    nodes = [_started(backend, node) for node in (0, 1)]
    with ThreadPoolExecutor(6) as pool:
        saved = list(pool.map(lambda i: make_adapter(nodes[i % 2], "t", seed=i), range(12)))
    assert sorted(m.version for m in saved) == list(range(1, 13))
    assert nodes[0].versions("t") == list(range(1, 13))
    for meta in saved:  # each number holds the file its writer was told it holds
        assert nodes[1 - meta.version % 2].load("t", meta.version, encoder.info).meta == meta


WRITER = """
import json, sys
from pathlib import Path
from safetensors.torch import load
from app.adapters.backends import open_store

location, node, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = open_store(location, node)
meta = store.metadata("t", 1).model_copy(update={"version": 0, "weights_sha256": ""})
tensors = load(store.weights_path("t", 1).read_bytes())
print(json.dumps([store.save(meta, tensors).version for _ in range(count)]))
"""


@pytest.mark.slow
def test_concurrent_writer_processes_get_distinct_versions(backend: Backend,
                                                           make_adapter: AdapterFactory) -> None:
    store = _started(backend)
    make_adapter(store, "t")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, backend.location,
                                 str(backend.nodes / f"process-{i}"), "3"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(3)]
    got = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
        got += json.loads(out)
    assert sorted(got) == list(range(2, 11))
    assert store.versions("t") == list(range(1, 11))


def test_a_corrupt_file_is_refused_and_not_kept(backend: Backend, make_adapter: AdapterFactory,
                                                encoder: FrozenEncoder) -> None:
    store = _started(backend)
    make_adapter(store, "t")
    backend.corrupt(("t", 1))
    reader = _started(backend, node=1)  # a node that has no copy yet
    for _ in range(2):  # refused each time: nothing bad was kept in between
        with pytest.raises(InvalidAdapterError, match="checksum mismatch"):
            reader.load("t", 1, encoder.info)
    assert ("t", 1) not in backend.copies(reader)


def test_deletes(backend: Backend, make_adapter: AdapterFactory, encoder: FrozenEncoder) -> None:
    store, other = _started(backend), _started(backend, node=1)
    for seed in range(3):
        make_adapter(store, "t", seed=seed)
    other.changes_since(Generation())
    assert other.delete("t", 2) == [2]
    assert store.versions("t") == [1, 3]
    with pytest.raises(AdapterNotFoundError):
        store.load("t", 2, encoder.info)
    assert other.delete("t") == [1, 3] and store.names() == []
    with pytest.raises(AdapterNotFoundError, match="has no versions"):
        store.delete("t")
    store.changes_since(Generation())
    assert store.page() == []


def test_changes_are_polled_in_o_changes(backend: Backend, make_adapter: AdapterFactory,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A node follows what another writes and deletes without reading the whole store."""
    poller, writer = _started(backend), _started(backend, node=1)
    for i in range(5):
        make_adapter(writer, f"other-{i}", seed=i)
    make_adapter(writer, "t", seed=1)
    seen = poller.changes_since(Generation())
    scans = backend.count_full_scans(poller, monkeypatch)

    assert poller.changes_since(seen.generation).stamps == {}  # nothing changed
    make_adapter(writer, "t", seed=2)
    make_adapter(writer, "new", seed=3)
    writer.delete("t", 1)
    changes = poller.changes_since(seen.generation)
    assert not changes.complete and set(changes.stamps) == {("t", 1), ("t", 2), ("new", 1)}
    assert changes.stamps[("t", 1)] is None
    assert poller.changes_since(changes.generation).stamps == {}
    assert scans() == 0
    assert [(a.name, a.versions) for a in poller.page(prefix="t")] == [("t", [2])]


def test_a_version_deleted_elsewhere_is_not_served_here(backend: Backend,
                                                       make_adapter: AdapterFactory,
                                                       encoder: FrozenEncoder) -> None:
    node, elsewhere = _started(backend), _started(backend, node=1)
    make_adapter(elsewhere, "t", seed=1)
    seen = node.changes_since(Generation())
    node.load("t", 1, encoder.info)  # now on this node, where it keeps copies
    elsewhere.delete("t")
    assert node.changes_since(seen.generation).stamps == {("t", 1): None}
    with pytest.raises(AdapterNotFoundError):
        node.load("t", 1, encoder.info)
    assert backend.copies(node) == set()


def test_a_version_replaced_by_hand_is_served_as_it_is_now(backend: Backend,
                                                          make_adapter: AdapterFactory,
                                                          encoder: FrozenEncoder) -> None:
    node, elsewhere = _started(backend), _started(backend, node=1)
    make_adapter(elsewhere, "t", seed=1)
    make_adapter(elsewhere, "u", seed=2)
    node.changes_since(Generation())
    node.load("t", 1, encoder.info)
    backend.copy_by_hand(("u", 1), ("t", 1))
    assert node.rescan() == 1  # what the slow rescan (or POST /adapters/reload) finds
    assert node.metadata("t", 1).weights_sha256 == node.metadata("u", 1).weights_sha256
    _assert_same_tensors(node, ("u", 1), ("t", 1), encoder)

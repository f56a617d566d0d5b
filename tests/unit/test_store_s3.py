"""What only the S3 backend has: start-up checks that name the store, serving through an outage
from the node's copies, the cost of a poll, create-only writes, the change log's pruning, cleaning
what dead writers left, and boto3 as an extra."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import boto3
import pytest

from app.adapters import backends
from app.adapters.index import Generation
from app.adapters.s3 import changelog
from app.adapters.s3 import store as s3_store
from app.adapters.s3.store import S3Store
from app.errors import AdapterNotFoundError, StoreUnavailableError
from app.model.encoder import FrozenEncoder
from tests.conftest import AdapterFactory
from tests.unit.backends import S3Backend, count_listings, count_reads


@pytest.fixture
def backend(s3_url: str, tmp_path: Path) -> S3Backend:
    return S3Backend(s3_url, tmp_path / "nodes")


def _node(backend: S3Backend, node: int = 0) -> S3Store:
    store = backend.store(node)
    assert isinstance(store, S3Store)
    store.open()
    store.rescan()
    return store


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


def _cut_off(store: S3Store) -> None:
    """S3 stops answering this node: its endpoint is a port where nothing listens."""
    store.bucket.client = boto3.session.Session().client(
        "s3", endpoint_url=f"http://127.0.0.1:{_closed_port()}")


def test_a_missing_bucket_or_endpoint_fails_the_start_naming_the_store(
        s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = backends.open_store("s3://no-such-bucket/x", tmp_path)
    with pytest.raises(StoreUnavailableError,
                       match=r"s3://no-such-bucket/x \(endpoint http://127.0.0.1:\d+\): the "
                             r"bucket 'no-such-bucket' does not exist"):
        missing.open()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    unreachable = backends.open_store("s3://bucket/x", tmp_path)
    with pytest.raises(StoreUnavailableError, match=r"s3://bucket/x .*cannot reach the bucket: "
                                                    r"Could not connect"):
        unreachable.open()


@pytest.mark.parametrize(("location", "message"), [
    ("gs://bucket/x", r"no adapter store for gs:// URLs \(use a local directory or one of s3://"),
    ("s3:///x", "expected s3://bucket or s3://bucket/prefix"),
])
def test_locations_that_name_no_store_are_refused(location: str, message: str, tmp_path: Path
                                                  ) -> None:
    with pytest.raises(StoreUnavailableError, match=message):
        backends.open_store(location, tmp_path)


def test_without_boto3_the_error_says_what_to_install(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith(("app.adapters.s3", "boto3"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 fails
    with pytest.raises(StoreUnavailableError, match=r"needs boto3, which is not installed: "
                                                    r"pip install 'adapter-serve\[s3\]'"):
        backends.open_store("s3://bucket/x", tmp_path)


def test_an_outage_stops_only_loads_of_what_the_node_has_no_copy_of(
        backend: S3Backend, make_adapter: AdapterFactory, encoder: FrozenEncoder) -> None:
    writer = _node(backend, 1)
    make_adapter(writer, "cached", seed=1)
    make_adapter(writer, "remote", seed=2)
    node = _node(backend)
    node.load("cached", 1, encoder.info)
    seen = node.changes_since(Generation())

    _cut_off(node)
    assert node.load("cached", 1, encoder.info).meta.version == 1  # from this node's copy
    with pytest.raises(StoreUnavailableError, match="cannot read remote/v1/manifest.json"):
        node.load("remote", 1, encoder.info)
    assert node.changes_since(seen.generation).stamps == {}  # what it knows, not an error
    assert [a.name for a in node.page()] == ["cached", "remote"]
    with pytest.raises(StoreUnavailableError):
        node.rescan()
    node.check_readable()  # /readyz: serving goes on


def test_a_poll_is_one_listing_and_reads_only_what_changed(
        backend: S3Backend, make_adapter: AdapterFactory) -> None:
    writer, poller = _node(backend, 1), _node(backend)
    for i in range(4):
        make_adapter(writer, f"a{i}", seed=i)
    seen = poller.changes_since(Generation())
    listings, reads = count_listings(poller), count_reads(poller)

    for expected_reads in (0, 4, 0):
        if expected_reads:
            make_adapter(writer, "new", seed=9)  # an entry and a manifest to read
            writer.delete("a0")  # an entry, and a manifest found gone
        before_listings, before_reads = listings(), reads()
        seen = poller.changes_since(seen.generation)
        assert listings() - before_listings == 1
        assert reads() - before_reads == expected_reads
    assert [a.name for a in poller.page()] == ["a1", "a2", "a3", "new"]


def test_a_writer_that_loses_a_number_takes_the_next(backend: S3Backend,
                                                     make_adapter: AdapterFactory) -> None:
    store = _node(backend)
    make_adapter(store, "t", seed=1)
    backend.write_without_marker(("t", 2), b"another writer's, being written")
    assert make_adapter(store, "t", seed=2).version == 3
    assert store.versions("t") == [1, 3]


def test_numbers_of_deleted_versions_are_not_reused(backend: S3Backend,
                                                    make_adapter: AdapterFactory) -> None:
    """A version number always means the same weights, on every node and in every cache."""
    store = _node(backend)
    make_adapter(store, "t", seed=1)
    make_adapter(store, "t", seed=2)
    assert store.delete("t") == [1, 2]
    assert make_adapter(store, "t", seed=3).version == 3
    with pytest.raises(AdapterNotFoundError):
        store.delete("t", 2)  # deleted once: nothing to claim again


def test_a_poller_behind_a_pruned_log_reads_the_store_once(
        backend: S3Backend, make_adapter: AdapterFactory, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setattr(changelog, "KEEP_CHANGES", 2)
    writer, poller = _node(backend, 1), _node(backend)
    make_adapter(writer, "t", seed=1)
    seen = poller.changes_since(Generation())
    for seed in range(2, 6):
        make_adapter(writer, "t", seed=seed)
    writer.delete("t", 1)
    full = count_listings(poller, lambda prefix: prefix == f"{backend.prefix}/")
    changes = poller.changes_since(seen.generation)
    assert full() == 1 and set(changes.stamps) == {("t", v) for v in range(1, 6)}
    assert poller.page()[0].versions == [2, 3, 4, 5]
    seen = poller.changes_since(changes.generation)  # back to following the log
    make_adapter(writer, "t", seed=6)
    assert set(poller.changes_since(seen.generation).stamps) == {("t", 6)} and full() == 1
    assert len(list(backend.client.list_objects_v2(
        Bucket=backend.bucket, Prefix="store/_changes/")["Contents"])) == 2


def test_cleaning_removes_what_dead_writers_and_deleters_left(
        backend: S3Backend, make_adapter: AdapterFactory, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    store = _node(backend)
    make_adapter(store, "t", seed=1)
    make_adapter(store, "t", seed=2)
    # A writer that died before its manifest, and a deleter that died after its claim:
    backend.write_without_marker(("t", 3), store.weights_path("t", 1).read_bytes())
    backend.put(backend.key(("t", 2), "deleted"), b"")
    store.clean_stale()
    assert _objects(backend, "t/") == [
        "t/v1/adapter.safetensors", "t/v1/manifest.json", "t/v2/deleted",
        "t/v3/adapter.safetensors"]  # weights this fresh may be a live writer's: kept
    monkeypatch.setattr(s3_store, "STALE_WRITE_S", 0.0)
    store.clean_stale()
    assert _objects(backend, "t/") == [
        "t/v1/adapter.safetensors", "t/v1/manifest.json", "t/v2/deleted"]
    assert store.versions("t") == [1]


def _objects(backend: S3Backend, under: str) -> list[str]:
    found = backend.client.list_objects_v2(Bucket=backend.bucket,
                                           Prefix=f"{backend.prefix}/{under}")
    return [item["Key"].removeprefix(f"{backend.prefix}/") for item in found.get("Contents", [])]


def test_a_damaged_copy_on_the_node_is_fetched_again(backend: S3Backend,
                                                     make_adapter: AdapterFactory,
                                                     encoder: FrozenEncoder) -> None:
    store = _node(backend)
    stored = make_adapter(store, "t")
    copy = store.cache.path(("t", 1))
    copy.write_bytes(copy.read_bytes()[:-10])  # the node's disk lost the end of it
    assert store.load("t", 1, encoder.info).meta == stored
    assert store.metadata("t", 1) == stored
    assert store.weights_path("t", 1) == copy
    assert copy.read_bytes() == backend.get(backend.key(("t", 1), "adapter.safetensors"))

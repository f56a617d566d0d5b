"""The store backends as the contract tests drive them: stores on one place (a directory, a bucket
prefix), as several nodes would open them, and what a crash, a bad disk or a person does there."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.adapters.backends import open_store
from app.adapters.index import Key
from app.adapters.storage import Store
from app.constants import WEIGHTS_FILE


class Backend:
    """One kind of store, at one place; `store(node)` opens it as node `node` would."""

    kind = ""

    def __init__(self, location: str, nodes: Path) -> None:
        self.location = location
        self.nodes = nodes

    def store(self, node: int = 0) -> Store:
        return open_store(self.location, self.nodes / f"node-{node}")

    def write_without_marker(self, key: Key, data: bytes) -> None:
        """What a writer killed between its objects (or files) leaves of version `key`."""
        raise NotImplementedError

    def corrupt(self, key: Key) -> None:
        """One byte of a stored version's weights flipped, as a bad disk or a person would."""
        raise NotImplementedError

    def copy_by_hand(self, source: Key, target: Key) -> None:
        """A version's files (objects) replaced by another's, by hand."""
        raise NotImplementedError

    def count_full_scans(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
        """A counter of the times `store` reads every version (a listing of the whole store)."""
        raise NotImplementedError

    def copies(self, store: Store) -> set[Key]:
        """The versions of which `store` keeps a copy on its node (none: it reads the store)."""
        return set()


def _flipped(data: bytes) -> bytes:
    return data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:]


class LocalBackend(Backend):
    kind = "local"

    @property
    def root(self) -> Path:
        return Path(self.location)

    def write_without_marker(self, key: Key, data: bytes) -> None:
        tmp = self.root / key[0] / ".tmp-killed-writer"  # not renamed into place: no version
        tmp.mkdir(parents=True)
        (tmp / WEIGHTS_FILE).write_bytes(data)

    def corrupt(self, key: Key) -> None:
        weights = self.root / key[0] / f"v{key[1]}" / WEIGHTS_FILE
        weights.write_bytes(_flipped(weights.read_bytes()))

    def copy_by_hand(self, source: Key, target: Key) -> None:
        folder = self.root / target[0] / f"v{target[1]}"
        shutil.rmtree(folder)
        shutil.copytree(self.root / source[0] / f"v{source[1]}", folder)

    def count_full_scans(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
        calls = []
        real = store.snapshot  # type: ignore[attr-defined]
        monkeypatch.setattr(store, "snapshot", lambda: calls.append(1) or real())
        return lambda: len(calls)


class S3Backend(Backend):
    kind = "s3"

    def __init__(self, location: str, nodes: Path) -> None:
        super().__init__(location, nodes)
        from tests import s3

        self.client = s3.client()
        self.bucket, _, self.prefix = location.removeprefix("s3://").partition("/")

    def key(self, key: Key, part: str) -> str:
        return f"{self.prefix}/{key[0]}/v{key[1]}/{part}"

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def write_without_marker(self, key: Key, data: bytes) -> None:
        self.put(self.key(key, WEIGHTS_FILE), data)  # the weights, never the manifest

    def corrupt(self, key: Key) -> None:
        weights = self.key(key, WEIGHTS_FILE)
        self.put(weights, _flipped(self.get(weights)))

    def copy_by_hand(self, source: Key, target: Key) -> None:
        for part in (WEIGHTS_FILE, "manifest.json"):
            self.put(self.key(target, part), self.get(self.key(source, part)))

    def count_full_scans(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
        return count_listings(store, lambda prefix: not prefix.startswith(
            f"{self.prefix}/_changes/"))

    def copies(self, store: Store) -> set[Key]:
        root = store.cache.root  # type: ignore[attr-defined]
        return {(path.parent.name, int(path.stem[1:])) for path in root.glob("*/v*.safetensors")}


def count_listings(store: Store, which: Callable[[str], bool] = lambda prefix: True
                   ) -> Callable[[], int]:
    """A counter of the ListObjectsV2 requests `store` makes whose prefix `which` accepts."""
    calls = []

    def seen(params: dict[str, Any], **_: Any) -> None:
        if which(params.get("Prefix", "")):
            calls.append(params)

    store.bucket.client.meta.events.register(  # type: ignore[attr-defined]
        "before-parameter-build.s3.ListObjectsV2", seen)
    return lambda: len(calls)


def count_reads(store: Store) -> Callable[[], int]:
    """A counter of the GetObject requests `store` makes."""
    calls = []
    store.bucket.client.meta.events.register(  # type: ignore[attr-defined]
        "before-parameter-build.s3.GetObject", lambda **_: calls.append(1))
    return lambda: len(calls)

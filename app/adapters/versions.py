"""Which adapter versions are stored, as this process follows the store's index, and their
metadata: what requests resolve names against, without reading the disk."""

from __future__ import annotations

import bisect
import threading

from app.adapters.format import AdapterMetadata
from app.adapters.index import Changes, Generation, Key, Stamp
from app.adapters.storage import Store, validate_name
from app.errors import AdapterNotFoundError


class StoredVersions:
    """Every stored version and its stamp, kept up to date from the store's change log."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._generation = Generation()  # of the store's index, as far as this one follows
        self._stamps: dict[Key, Stamp] = {}  # every version on disk -> its stamp
        self._versions: dict[str, list[int]] = {}  # name -> its versions, oldest first
        self._meta: dict[Key, AdapterMetadata] = {}

    def follow(self) -> set[Key]:
        """Apply the store's changes since the last call (O(changes)); the versions touched.
        The caller serialises calls, so changes are applied in the order the store made them."""
        changes = self.store.changes_since(self._generation)
        with self._lock:
            return self._apply(changes)

    def _apply(self, changes: Changes) -> set[Key]:
        self._generation = changes.generation
        stamps = changes.stamps
        if changes.complete:  # every version: what differs from ours changed
            touched = {k for k in self._stamps.keys() | stamps.keys()
                       if self._stamps.get(k) != stamps.get(k)}
        else:  # logged changes: a version deleted and written again may keep its stamp
            touched = set(stamps)
        for key in touched:
            self._set(key, stamps.get(key))
            self._meta.pop(key, None)
        return touched

    def _set(self, key: Key, stamp: Stamp | None) -> None:
        name, version = key
        versions = self._versions.setdefault(name, [])
        if stamp is None:
            self._stamps.pop(key, None)
            if version in versions:
                versions.remove(version)
        else:
            if key not in self._stamps:
                bisect.insort(versions, version)
            self._stamps[key] = stamp
        if not versions:
            del self._versions[name]

    def __contains__(self, key: Key) -> bool:
        return key in self._stamps

    def stamp(self, key: Key) -> Stamp | None:
        return self._stamps.get(key)

    def superseded(self, touched: set[Key]) -> set[Key]:
        """Of the touched versions' names, the versions that are gone, replaced or no longer the
        newest: what memory should let go of."""
        out = set()
        with self._lock:
            for name in {name for name, _ in touched}:
                versions = self._versions.get(name, [])
                known = {key for key in touched if key[0] == name} | {(name, v) for v in versions}
                out |= {key for key in known
                        if key in touched or not versions or versions[-1] > key[1]}
        return out

    def newest_of(self, touched: set[Key]) -> list[Key]:
        """The newest version of each touched name, most recently written first."""
        with self._lock:
            newest = {(name, self._versions[name][-1]) for name, _ in touched
                      if name in self._versions}
            return sorted(newest, key=lambda k: -self._stamps[k][0])

    def names(self) -> dict[str, list[int]]:
        with self._lock:
            return {name: list(self._versions[name]) for name in sorted(self._versions)}

    def versions(self, name: str) -> list[int]:
        """The stored versions of one name, oldest first ([] when none)."""
        with self._lock:
            return list(self._versions.get(name, []))

    def counts(self) -> tuple[int, int]:
        """(adapter names, versions) stored."""
        with self._lock:
            return len(self._versions), len(self._stamps)

    def resolve(self, name: str, version: int | None = None) -> Key:
        """The (name, version) a request means: the newest unless it pins one. 404 otherwise."""
        validate_name(name)
        known = self.versions(name)
        if not known:
            raise AdapterNotFoundError(f"no adapter named {name!r}; GET /adapters lists them")
        if version is None:
            return name, known[-1]
        if version in known:
            return name, version
        raise AdapterNotFoundError(f"adapter {name!r} has no version {version} (it has {known})")

    def metadata(self, key: Key) -> AdapterMetadata:
        """A version's metadata, read from disk once (versions never change in place)."""
        with self._lock:
            cached = self._meta.get(key)
        if cached is None:
            cached = self.store.metadata(*key)
            with self._lock:
                self._meta[key] = cached
        return cached

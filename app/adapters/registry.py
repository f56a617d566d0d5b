"""Task name -> adapter resident on the device: an LRU set that follows the store."""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import torch

from app.adapters.format import AdapterMetadata
from app.adapters.index import Changes, Generation, Key, Stamp
from app.adapters.store import AdapterStore, validate_name
from app.errors import AdapterNotFoundError
from app.model.bank import AdapterBank, RowRouting
from app.model.encoder import FrozenEncoder
from app.tasks import Head, build_head

log = logging.getLogger(__name__)


@dataclass
class ResidentAdapter:
    """One adapter version on the device: its slot in the bank and its head."""

    key: Key  # where it is stored: a copy made by hand keeps the metadata of its original
    meta: AdapterMetadata
    slot: int
    head: Head
    pins: int = 0
    retired: bool = False  # removed or replaced: freed when the last pin goes


@dataclass
class RegistryStats:
    loads: int = 0
    evictions: int = 0


class AdapterRegistry:
    """Which versions exist (following the store's index) and which are resident (at most `capacity`).

    Requests pin the adapters of their batch for the length of a forward pass; eviction and
    removal only free unpinned adapters, so a request that started never loses its adapter.
    Loading happens outside the registry lock, under a per-version lock, so one slow load never
    blocks requests for other adapters.
    """

    def __init__(self, store: AdapterStore, encoder: FrozenEncoder, capacity: int) -> None:
        self.store = store
        self.encoder = encoder
        self.capacity = capacity
        self.bank = AdapterBank(encoder.info.hidden_size, encoder.info.num_layers,
                                encoder.device, encoder.dtype)
        self.stats = RegistryStats()
        self._warned_at = -math.inf  # when the over-capacity warning was last logged
        self._lock = threading.RLock()
        self._key_locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)
        self._refresh_lock = threading.Lock()
        self._generation = Generation()  # of the store's index, as far as this registry follows
        self._index: dict[Key, Stamp] = {}  # every version on disk -> its stamp
        self._versions: dict[str, list[int]] = {}  # name -> its versions, oldest first
        self._resident: OrderedDict[Key, ResidentAdapter] = OrderedDict()
        self._meta: dict[Key, AdapterMetadata] = {}

    # -------------------------------------------------------------------------------- index
    def refresh(self, rescan: bool = False) -> bool:
        """Follow the store's changes since the last refresh: O(changes), O(1) when none.

        Retires resident versions that vanished, changed or were superseded. `rescan` first
        corrects the store's index from the files (slow: the periodic rescan and POST
        /adapters/reload do it). Returns whether anything changed.
        """
        if rescan:
            self.store.rescan()
        with self._refresh_lock:  # changes applied in the order the store made them
            changes = self.store.changes_since(self._generation)
            with self._lock:
                touched = self._apply(changes)
        if touched:
            log.info("adapter index refreshed: %d versions changed; %d versions of %d adapters",
                     len(touched), len(self._index), len(self._versions))
        return bool(touched)

    def _apply(self, changes: Changes) -> set[Key]:
        self._generation = changes.generation
        stamps = changes.stamps
        if changes.complete:  # every version: what differs from ours changed
            touched = {k for k in self._index.keys() | stamps.keys()
                       if self._index.get(k) != stamps.get(k)}
        else:  # logged changes: a version deleted and written again may keep its stamp
            touched = set(stamps)
        for key in touched:
            self._set(key, stamps.get(key))
            self._meta.pop(key, None)
        if touched:
            for key, entry in list(self._resident.items()):
                versions = self._versions.get(key[0], [])
                if key in touched or not versions or versions[-1] > key[1]:
                    self._retire(entry)  # gone, replaced or superseded
        return touched

    def _set(self, key: Key, stamp: Stamp | None) -> None:
        name, version = key
        versions = self._versions.setdefault(name, [])
        if stamp is None:
            self._index.pop(key, None)
            if version in versions:
                versions.remove(version)
        else:
            if key not in self._index:
                bisect.insort(versions, version)
            self._index[key] = stamp
        if not versions:
            del self._versions[name]

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
            return len(self._versions), len(self._index)

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

    # ----------------------------------------------------------------------------- resident
    def acquire(self, key: Key) -> ResidentAdapter:
        """Pin a version on the device, loading it (and evicting others) when needed."""
        entry = self._pin_resident(key)
        if entry is not None:
            return entry
        with self._key_locks[key]:
            entry = self._pin_resident(key)
            if entry is not None:
                return entry
            return self._load(key)

    def _pin_resident(self, key: Key) -> ResidentAdapter | None:
        with self._lock:
            entry = self._resident.get(key)
            if entry is None or entry.retired:
                return None
            entry.pins += 1
            self._resident.move_to_end(key)
            return entry

    def _load(self, key: Key) -> ResidentAdapter:
        t0 = time.perf_counter()
        loaded = self.store.load(key[0], key[1], self.encoder.info)
        with torch.device("meta"):  # no random init: the stored weights replace it at once
            head = build_head(loaded.meta.head_config, self.encoder.info.hidden_size)
        head.load_state_dict(loaded.head, assign=True)
        head.to(device=self.encoder.device, dtype=self.encoder.dtype).eval().requires_grad_(False)
        with self._lock:
            self._evict(room_for=1)
            slot = self.bank.add(loaded.meta.adapter_config, loaded.adapter)
            entry = ResidentAdapter(key, loaded.meta, slot, head, pins=1)
            self._resident[key] = entry
            if key not in self._index:  # saved by this process before the next refresh
                self._set(key, self.store.stamp(*key))
        self.stats.loads += 1
        log.info("loaded adapter %s v%d into slot %d in %.1f ms", key[0], key[1], slot,
                 (time.perf_counter() - t0) * 1000)
        return entry

    def release(self, entry: ResidentAdapter) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.retired and entry.pins == 0:
                self.bank.remove(entry.slot)

    def _evict(self, room_for: int) -> None:
        for entry in list(self._resident.values()):
            if len(self._resident) + room_for <= self.capacity:
                return
            if entry.pins == 0:
                self._retire(entry)
                self.stats.evictions += 1
        now = time.monotonic()
        if len(self._resident) + room_for > self.capacity and now - self._warned_at > 60:
            self._warned_at = now  # a batch over more tasks than the cap does this every time
            log.warning("all %d resident adapters are in use; exceeding the cap for now",
                        len(self._resident))

    def _retire(self, entry: ResidentAdapter) -> None:
        self._resident.pop(entry.key, None)
        entry.retired = True
        if entry.pins == 0:
            self.bank.remove(entry.slot)

    def routing(self, slots: list[int]) -> RowRouting:
        """Per-row routing for one batch: row i goes through the pinned adapter in slots[i]."""
        return self.bank.routing(slots)

    def resident_keys(self) -> list[Key]:
        with self._lock:
            return list(self._resident)

    # ------------------------------------------------------------------------------ changes
    def ensure_indexed(self, name: str, version: int) -> None:
        """Another process reported storing this version: make it visible now, not at the next poll."""
        with self._lock:
            known = (name, version) in self._index
        if not known:
            self.refresh()

    def delete(self, name: str, version: int | None = None) -> list[int]:
        removed = self.store.delete(name, version)
        self.refresh()
        return removed

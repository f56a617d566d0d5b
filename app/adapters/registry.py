"""Task name -> adapter resident on the device: an LRU set that follows the store."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import torch

from app.adapters.format import AdapterMetadata
from app.adapters.store import AdapterStore, validate_name
from app.errors import AdapterNotFoundError
from app.model.bank import AdapterBank, RowRouting
from app.model.encoder import FrozenEncoder
from app.tasks import Head, build_head

log = logging.getLogger(__name__)

Key = tuple[str, int]


@dataclass
class ResidentAdapter:
    """One adapter version on the device: its slot in the bank and its head."""

    meta: AdapterMetadata
    slot: int
    head: Head
    pins: int = 0
    retired: bool = False  # removed or replaced: freed when the last pin goes

    @property
    def key(self) -> Key:
        return self.meta.name, self.meta.version


@dataclass
class RegistryStats:
    loads: int = 0
    evictions: int = 0


class AdapterRegistry:
    """Which versions exist (an index of the store) and which are resident (at most `capacity`).

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
        self._index: dict[Key, tuple[int, int]] = {}  # every version on disk -> its stamp
        self._resident: OrderedDict[Key, ResidentAdapter] = OrderedDict()
        self._meta: dict[Key, AdapterMetadata] = {}

    # -------------------------------------------------------------------------------- index
    def refresh(self) -> bool:
        """Re-read the store; retire resident versions that vanished, changed or were superseded.

        Returns whether anything changed.
        """
        snapshot = self.store.snapshot()
        with self._lock:
            if snapshot == self._index:
                return False
            latest = self._latest_of(snapshot)
            for key, entry in list(self._resident.items()):
                gone = snapshot.get(key) != self._index.get(key) or key not in snapshot
                superseded = latest.get(key[0], 0) > key[1]
                if gone or superseded:
                    self._retire(entry)
            self._meta = {k: m for k, m in self._meta.items()
                          if k in snapshot and snapshot[k] == self._index.get(k)}
            self._index = snapshot
        log.info("adapter index refreshed: %d versions of %d adapters",
                 len(snapshot), len(self._latest_of(snapshot)))
        return True

    @staticmethod
    def _latest_of(index: dict[Key, tuple[int, int]]) -> dict[str, int]:
        latest: dict[str, int] = {}
        for name, version in index:
            latest[name] = max(version, latest.get(name, 0))
        return latest

    def names(self) -> dict[str, list[int]]:
        with self._lock:
            out: dict[str, list[int]] = defaultdict(list)
            for name, version in sorted(self._index):
                out[name].append(version)
            return dict(out)

    def resolve(self, name: str, version: int | None = None) -> Key:
        """The (name, version) a request means: the newest unless it pins one. 404 otherwise."""
        validate_name(name)
        with self._lock:
            if version is None:
                versions = [v for n, v in self._index if n == name]
                if versions:
                    return name, max(versions)
                raise AdapterNotFoundError(f"no adapter named {name!r}; GET /adapters lists them")
            if (name, version) in self._index:
                return name, version
        known = self.names().get(name)
        if known is None:
            raise AdapterNotFoundError(f"no adapter named {name!r}; GET /adapters lists them")
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
            entry = ResidentAdapter(loaded.meta, slot, head, pins=1)
            self._resident[key] = entry
            if key not in self._index:  # saved by this process before the next refresh
                self._index[key] = self.store.stamp(*key)
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

"""Where each adapter version is held (device, host memory or disk), and pins for batches;
which versions exist is followed by app.adapters.versions."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from app import metrics
from app.adapters.format import AdapterMetadata
from app.adapters.index import Key
from app.adapters.loader import AdapterLoader
from app.adapters.storage import Store
from app.adapters.tiers import HostAdapter, HostTier, Tier, TierBudgets, TierStats
from app.adapters.versions import StoredVersions
from app.errors import AdapterNotFoundError
from app.model.bank import AdapterBank
from app.model.encoder import FrozenEncoder
from app.model.routing import RowRouting
from app.status import AdapterResidency, TierState
from app.tasks import Head, build_head

log = logging.getLogger(__name__)


class DeviceTierFull(Exception):
    """The device tier cannot take this adapter without evicting one that a batch is using."""


@dataclass
class ResidentAdapter:
    """One adapter version on the device: its slot in the bank and its head."""

    key: Key  # where it is stored: a copy made by hand keeps the metadata of its original
    meta: AdapterMetadata
    slot: int
    head: Head
    head_bytes: int
    pins: int = 0
    retired: bool = False  # evicted, removed or replaced: its slot is freed when the last pin goes
    copied: Any = None  # on a GPU: the event recorded after its asynchronous copy

    def wait_copied(self, device: torch.device) -> None:
        """Make `device`'s current stream wait for this adapter's copy to it (GPU only)."""
        if self.copied is not None:
            torch.cuda.current_stream(device).wait_event(self.copied)


class AdapterRegistry:
    """Where each stored version is held (which versions exist: `self.stored`).

    The device tier is the bank (plus heads), within `budgets.device_bytes`; the host tier keeps
    verified, decoded copies within `budgets.host_bytes` (none on a CPU, where the bank already is
    in host memory). Requests ask `prefetch()` when they arrive: a version in no memory tier is
    read by the loader thread, so a batch never waits for a disk read of another request's
    adapter. Batches pin the adapters of their rows for the length of a forward pass; eviction
    and removal only free unpinned adapters, so a request that started never loses its adapter.
    """

    def __init__(self, store: Store, encoder: FrozenEncoder, budgets: TierBudgets) -> None:
        self.store = store
        self.encoder = encoder
        self.budgets = budgets
        self.bank = AdapterBank(encoder.info.dims,
                                encoder.device, encoder.dtype, budget_bytes=budgets.device_bytes)
        self.host = HostTier(budgets.host_bytes)
        self.stats = TierStats()
        self.loader = AdapterLoader(self._fill)
        self._on_gpu = encoder.device.type == "cuda"
        self._copy_stream = (torch.cuda.Stream(encoder.device)  # type: ignore[no-untyped-call]
                             if self._on_gpu else None)
        self._head_bytes = 0  # of the heads whose bank slot is occupied
        self._warned_at = -math.inf  # when the over-budget warning was last logged
        self._lock = threading.RLock()
        self._key_locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)
        self._refresh_lock = threading.Lock()
        self.stored = StoredVersions(store)
        self._resident: OrderedDict[Key, ResidentAdapter] = OrderedDict()

    def close(self) -> None:
        """Stop the loader threads (pending preloads are dropped)."""
        self.loader.close()

    # ---------------------------------------------------------------------------- versions
    def refresh(self, rescan: bool = False) -> bool:
        """Follow the store's changes since the last refresh: O(changes), O(1) when none.

        Lets go of versions that vanished, changed or were superseded, and queues the new newest
        versions for preloading. `rescan` first corrects the store's index from the files (slow:
        the periodic rescan and POST /adapters/reload do it). Returns whether anything changed.
        """
        if rescan:
            self.store.rescan()
        with self._refresh_lock:  # changes applied in the order the store made them
            touched = self.stored.follow()
            with self._lock:
                for key in self.stored.superseded(touched):
                    self.host.discard(key)
                    entry = self._resident.get(key)
                    if entry is not None:
                        self._retire(entry)
                    if key not in self.stored:
                        self._key_locks.pop(key, None)
        if touched:
            names, versions = self.stored.counts()
            log.info("adapter index refreshed: %d versions changed; %d versions of %d adapters",
                     len(touched), versions, names)
            if self.budgets.preload:
                self.loader.preload(self.stored.newest_of(touched))
        return bool(touched)

    def names(self) -> dict[str, list[int]]:
        return self.stored.names()

    def versions(self, name: str) -> list[int]:
        """The stored versions of one name, oldest first ([] when none)."""
        return self.stored.versions(name)

    def counts(self) -> tuple[int, int]:
        """(adapter names, versions) stored."""
        return self.stored.counts()

    def resolve(self, name: str, version: int | None = None) -> Key:
        """The (name, version) a request means: the newest unless it pins one. 404 otherwise."""
        return self.stored.resolve(name, version)

    def metadata(self, key: Key) -> AdapterMetadata:
        """A version's metadata, read from disk once (versions never change in place)."""
        return self.stored.metadata(key)

    # ---------------------------------------------------------------------------- the tiers
    def tier(self, key: Key) -> Tier:
        with self._lock:
            entry = self._resident.get(key)
            if entry is not None and not entry.retired:
                return Tier.DEVICE
            return Tier.HOST if key in self.host else Tier.DISK

    def prefetch(self, key: Key) -> Future[None] | None:
        """Called as a request arrives: None when its adapter is on the device, else a future
        that completes once the loader has put it there (from host memory or from disk)."""
        tier = self.tier(key)
        self.stats.lookups[tier] += 1
        if tier is Tier.DEVICE:
            return None
        return self.loader.request(key)

    def _fill(self, key: Key, demand: bool) -> None:
        """The loader's work: bring `key` onto the device (demand), or into whichever memory tier
        has room for it without evicting anything (preload)."""
        with self._key_locks[key]:
            if self.tier(key) is Tier.DEVICE:
                return
            item = self.host.get(key)
            if not demand and item is None and not self._preload_fits(key):
                return  # memory is full: the rest waits on disk for a request
            if item is None:
                item = self._read(key, evict_host=demand)
            try:
                entry = self._promote(item, evict=demand, force=False, pin=False)
            except DeviceTierFull:  # every adapter on the device is in use: its batch splits
                return
            if entry is None:
                self.host.put(item, evict=False)

    def _preload_fits(self, key: Key) -> bool:
        meta = self.metadata(key)
        with self._lock:
            if self._device_fits(meta, 0):
                return True
        size = (self.stored.stamp(key) or (0, 0))[1]  # the file's size: about its decoded size
        return self.host.fits(size)

    def _read(self, key: Key, evict_host: bool) -> HostAdapter:
        """Read, verify and decode a version from disk; kept in the host tier when it has room."""
        t0 = time.perf_counter()
        loaded = self.store.load(key[0], key[1], self.encoder.info, self.metadata(key))
        adapter, head = loaded.adapter, loaded.head
        if self._on_gpu:  # page-locked, so the copy to the device runs asynchronously
            adapter = {k: t.pin_memory() for k, t in adapter.items()}
            head = {k: t.pin_memory() for k, t in head.items()}
        item = HostAdapter(key, loaded.meta, adapter, head)
        seconds = time.perf_counter() - t0
        self.stats.cold_loads += 1
        metrics.ADAPTER_COLD_LOAD_SECONDS.observe(seconds)
        log.debug("read adapter %s v%d from disk in %.1f ms", key[0], key[1], seconds * 1000)
        if self.host.budget:
            self.host.put(item, evict=evict_host)
        return item

    def _promote(self, item: HostAdapter, evict: bool, force: bool, pin: bool
                 ) -> ResidentAdapter | None:
        """Copy a decoded version into the device tier; None when it does not fit and `evict`
        is off. Raises DeviceTierFull when only evicting adapters in use would make room."""
        key, meta = item.key, item.meta
        with torch.device("meta"):  # no random init: the stored weights replace it at once
            head = build_head(meta.head_config, self.encoder.info.hidden_size)
        head.load_state_dict(item.head, assign=True)
        head_bytes = sum(t.nbytes for t in item.head.values())
        with self._lock:
            if key not in self.stored:  # deleted while it was being read: not brought back
                raise AdapterNotFoundError(f"adapter {key[0]!r} has no version {key[1]} (it "
                                           f"was deleted while being loaded)")
            if not self._make_room(meta, head_bytes, evict, force):
                return None
            stream = (torch.cuda.stream(self._copy_stream) if self._copy_stream is not None
                      else contextlib.nullcontext())
            with stream:  # on a GPU: copies on the side stream, the serving stream never waits
                head.to(device=self.encoder.device, dtype=self.encoder.dtype,
                        non_blocking=True).eval().requires_grad_(False)
                slot = self.bank.add(meta.adapter_config, item.adapter)
                copied = None
                if self._copy_stream is not None:
                    copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
                    copied.record(self._copy_stream)
            entry = ResidentAdapter(key, meta, slot, head, head_bytes, pins=int(pin),
                                    copied=copied)
            self._resident[key] = entry
            self._head_bytes += head_bytes
        self.stats.promotions += 1
        log.debug("adapter %s v%d on the device in slot %d", key[0], key[1], slot)
        return entry

    def _device_fits(self, meta: AdapterMetadata, head_bytes: int) -> bool:
        cap = self.budgets.device_adapters
        if cap and len(self._resident) >= cap:
            return False
        need = self.bank.bytes_with(meta.adapter_config) + self._head_bytes + head_bytes
        return need <= self.budgets.device_bytes

    def _make_room(self, meta: AdapterMetadata, head_bytes: int, evict: bool, force: bool
                   ) -> bool:
        """Evict unpinned versions, least recently used first, until `meta` fits (lock held)."""
        if self._device_fits(meta, head_bytes):
            return True
        if not evict:
            return False
        for entry in list(self._resident.values()):
            if entry.pins == 0:
                self._retire(entry)
                self.stats.device_evictions += 1
                if self._device_fits(meta, head_bytes):
                    return True
        if not force:
            raise DeviceTierFull(f"adapter {meta.name!r} does not fit beside those in use")
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now  # a batch over more adapters than the budget does this often
            log.warning("the adapters in use fill the device tier (%d adapters, %d bytes; "
                        "DEVICE_ADAPTER_BYTES=%d); exceeding it for now", len(self._resident),
                        self.bank.used_bytes + self._head_bytes, self.budgets.device_bytes)
        return True

    # ------------------------------------------------------------------------------ batches
    def acquire(self, key: Key, force: bool = True) -> ResidentAdapter:
        """Pin a version on the device for one batch, bringing it there when needed.

        A version in no memory tier is read here (the rare case: requests prefetch theirs).
        Raises DeviceTierFull when it only fits by evicting adapters in use, unless `force`
        (the first adapter of a batch always goes in, over the budget if it must).
        """
        entry = self._pin_resident(key)
        if entry is not None:
            return entry
        with self._key_locks[key]:
            entry = self._pin_resident(key)
            if entry is not None:
                return entry
            with self._lock:  # room first: no read from disk for an adapter that cannot go in
                self._make_room(self.metadata(key), 0, evict=True, force=force)
            item = self.host.get(key)
            if item is None:
                item = self._read(key, evict_host=True)
                self.stats.hot_path_loads += 1
            entry = self._promote(item, evict=True, force=True, pin=True)
            assert entry is not None  # forced
            return entry

    def _pin_resident(self, key: Key) -> ResidentAdapter | None:
        with self._lock:
            entry = self._resident.get(key)
            if entry is None or entry.retired:
                return None
            entry.pins += 1
            self._resident.move_to_end(key)
            return entry

    def release(self, entry: ResidentAdapter) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.retired and entry.pins == 0:
                self._free(entry)

    def _retire(self, entry: ResidentAdapter) -> None:
        self._resident.pop(entry.key, None)
        entry.retired = True
        if entry.pins == 0:
            self._free(entry)

    def _free(self, entry: ResidentAdapter) -> None:
        self.bank.remove(entry.slot)
        self._head_bytes -= entry.head_bytes

    def routing(self, slots: list[int]) -> RowRouting:
        """Per-row routing for one batch: row i goes through the pinned adapter in slots[i]."""
        return self.bank.routing(slots)

    def resident_keys(self) -> list[Key]:
        """Versions on the device, least recently used first."""
        with self._lock:
            return list(self._resident)

    def residency(self) -> AdapterResidency:
        """Each memory tier's adapters, bytes and budget, and the lookups and loads so far."""
        with self._lock:
            device = TierState(len(self._resident), self.bank.used_bytes + self._head_bytes,
                               self.budgets.device_bytes)
        st = self.stats
        return AdapterResidency(
            device=device, host=TierState(len(self.host), self.host.bytes, self.host.budget),
            lookups={t.value: n for t, n in st.lookups.items()}, hit_ratio=st.hit_ratio(),
            cold_loads=st.cold_loads, hot_path_loads=st.hot_path_loads, promotions=st.promotions,
            evictions={"device": st.device_evictions, "host": self.host.evictions})

    # ------------------------------------------------------------------------------ changes
    def ensure_indexed(self, name: str, version: int) -> None:
        """Another process reported storing this version: make it visible now, not at the next poll."""
        if (name, version) not in self.stored:
            self.refresh()

    def delete(self, name: str, version: int | None = None) -> list[int]:
        removed = self.store.delete(name, version)
        self.refresh()
        return removed


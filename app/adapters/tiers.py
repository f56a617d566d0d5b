"""Where an adapter version is held, and the host tier: verified adapters decoded in host memory.

Three places, fastest first: the device tier (a slot in the bank, a head on the device), the host
tier (decoded, checked tensors in RAM, pinned on a GPU so the copy to the device is asynchronous)
and the disk (the store: a read, a sha256 and a header check away). On a CPU the device is host
memory, so the bank is the only memory tier and the host tier holds nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from torch import Tensor

from app.adapters.format import AdapterMetadata
from app.adapters.index import Key


class Tier(str, Enum):
    DEVICE = "device"
    HOST = "host"
    DISK = "disk"


@dataclass(frozen=True)
class TierBudgets:
    """How much each memory tier may hold, in bytes (and optionally a count on the device)."""

    device_bytes: int  # bank slots (padded to the widest resident adapter) and heads
    host_bytes: int = 0  # decoded copies in host memory besides the device's; 0: no host tier
    device_adapters: int = 0  # at most this many on the device; 0: the bytes decide alone
    preload: bool = False  # fill the memory tiers with stored adapters in the background


@dataclass
class HostAdapter:
    """One verified version, decoded: what the device tier is filled from."""

    key: Key
    meta: AdapterMetadata
    adapter: dict[str, Tensor]  # names as in tensor_shapes()
    head: dict[str, Tensor]  # the head's state_dict

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.adapter.values(), *self.head.values()))


@dataclass
class TierStats:
    """Counts since the start, for /metrics."""

    lookups: dict[Tier, int] = field(default_factory=lambda: dict.fromkeys(Tier, 0))
    cold_loads: int = 0  # reads from disk (verified and decoded)
    hot_path_loads: int = 0  # of those, made by a batch that found its adapter in no memory tier
    promotions: int = 0  # copies into the device tier
    device_evictions: int = 0  # the host tier counts its own

    @property
    def loads(self) -> int:
        """Versions put on the device (from host memory or from disk)."""
        return self.promotions

    def hit_ratio(self) -> float:
        """Share of request lookups that found their adapter in a memory tier (1.0 before any)."""
        total = sum(self.lookups.values())
        return 1.0 if total == 0 else 1 - self.lookups[Tier.DISK] / total


class HostTier:
    """Decoded adapters in host memory, least recently used evicted beyond `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.evictions = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[Key, HostAdapter] = OrderedDict()

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> HostAdapter | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit without evicting anything."""
        return self.bytes + nbytes <= self.budget

    def put(self, item: HostAdapter, evict: bool = True) -> bool:
        """Keep `item`, evicting the least recently used when `evict`; False when it does not fit."""
        size = item.nbytes
        with self._lock:
            if item.key in self._items:
                self._items.move_to_end(item.key)
                return True
            if size > self.budget or (not evict and self.bytes + size > self.budget):
                return False
            while self.bytes + size > self.budget:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes
                self.evictions += 1
            self._items[item.key] = item
            self.bytes += size
            return True

    def discard(self, key: Key) -> None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self.bytes -= item.nbytes

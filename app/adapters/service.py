"""Adapter management use cases: list, describe, export, import, delete, reload."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.adapters.format import AdapterMetadata
from app.adapters.index import NameSummary
from app.adapters.registry import AdapterRegistry
from app.adapters.store import AdapterStore
from app.adapters.tiers import Tier
from app.errors import PayloadTooLargeError


@dataclass(frozen=True)
class AdapterInfo:
    meta: AdapterMetadata
    versions: list[int]
    tier: Tier  # where this version is held now


@dataclass(frozen=True)
class AdapterPage:
    """Names in order; `last` is the last one shown when more follow, else None."""

    adapters: list[NameSummary]
    last: str | None


class AdapterService:
    def __init__(self, store: AdapterStore, registry: AdapterRegistry, max_bytes: int) -> None:
        self.store = store
        self.registry = registry
        self.max_bytes = max_bytes

    def overview(self, limit: int, after: str = "", prefix: str = "") -> AdapterPage:
        """One page of names in order, from the store's index (no adapter file is read)."""
        found = self.store.page(after, prefix, limit + 1)
        more = len(found) > limit
        return AdapterPage(found[:limit], found[limit - 1].name if more else None)

    def describe(self, name: str, version: int | None = None) -> AdapterInfo:
        key = self.registry.resolve(name, version)
        return AdapterInfo(self.registry.metadata(key), self.registry.versions(name),
                           self.registry.tier(key))

    def weights_path(self, name: str, version: int | None = None) -> tuple[Path, int]:
        name, v = self.registry.resolve(name, version)
        return self.store.weights_path(name, v), v

    def import_bytes(self, name: str, data: bytes) -> AdapterInfo:
        """Store an adapter file as the next version of `name`; it is served from now on."""
        if len(data) > self.max_bytes:
            raise PayloadTooLargeError(
                f"adapter file of {len(data)} bytes exceeds the limit of {self.max_bytes}")
        meta = self.store.import_bytes(name, data, self.registry.encoder.info)
        self.registry.refresh()  # reads the one change the import made, no rescan
        key = (name, meta.version)
        return AdapterInfo(meta, self.registry.versions(name), self.registry.tier(key))

    def delete(self, name: str, version: int | None = None) -> list[int]:
        return self.registry.delete(name, version)

    def reload(self) -> tuple[bool, int, int]:
        """Rescan the files now (changes made by hand, or lost by a crash); counts after it."""
        changed = self.registry.refresh(rescan=True)
        return changed, *self.registry.counts()

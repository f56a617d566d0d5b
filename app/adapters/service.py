"""Adapter management use cases: list, describe, export, import, delete, reload."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.adapters import format as fmt
from app.adapters import interop
from app.adapters.archive import archive_kind, pack_zip, unpack
from app.adapters.format import AdapterMetadata
from app.adapters.index import NameSummary
from app.adapters.registry import AdapterRegistry
from app.adapters.storage import Store
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
    tiers: list[Tier]  # where each name's newest version is held now
    last: str | None


class AdapterService:
    def __init__(self, store: Store, registry: AdapterRegistry, max_bytes: int,
                 strict_base: bool = False) -> None:
        self.store = store
        self.registry = registry
        self.max_bytes = max_bytes
        self.strict_base = strict_base

    def overview(self, limit: int, after: str = "", prefix: str = "", contains: str = ""
                 ) -> AdapterPage:
        """One page of names in order, from the store's index (no adapter file is read)."""
        found = self.store.page(after, prefix, limit + 1, contains)
        more, shown = len(found) > limit, found[:limit]
        tiers = [self.registry.tier((a.name, a.versions[-1])) for a in shown]
        return AdapterPage(shown, tiers, found[limit - 1].name if more else None)

    def describe(self, name: str, version: int | None = None) -> AdapterInfo:
        key = self.registry.resolve(name, version)
        return AdapterInfo(self.registry.metadata(key), self.registry.versions(name),
                           self.registry.tier(key))

    def weights_path(self, name: str, version: int | None = None) -> tuple[Path, int]:
        name, v = self.registry.resolve(name, version)
        return self.store.weights_path(name, v), v

    def import_bytes(self, name: str, data: bytes, content_type: str | None = None
                     ) -> AdapterInfo:
        """Store an upload as the next version of `name`; it is served from now on. The upload
        is this service's weights file, or a .zip / .tar.gz of a directory saved by AdapterHub
        or PEFT (converted once into this service's format)."""
        if len(data) > self.max_bytes:
            raise PayloadTooLargeError(
                f"adapter file of {len(data)} bytes exceeds the limit of {self.max_bytes}")
        kind = archive_kind(data, content_type)
        if kind is not None:
            with tempfile.TemporaryDirectory(prefix="adapter-import-") as tmp:
                return self.import_directory(name, unpack(data, kind, Path(tmp), self.max_bytes))
        meta = self.store.import_bytes(name, data, self.registry.encoder.info)
        self.registry.refresh()  # reads the one change the import made, no rescan
        key = (name, meta.version)
        return AdapterInfo(meta, self.registry.versions(name), self.registry.tier(key))

    def base_context(self) -> interop.BaseContext:
        encoder = self.registry.encoder
        return interop.BaseContext(encoder.info, int(encoder.model.config.vocab_size),
                                   encoder.pooler)

    def import_directory(self, name: str, directory: Path) -> AdapterInfo:
        """Convert a directory saved by AdapterHub or PEFT and store it like any import (every
        check a load makes), recording where it came from and what to know about its base."""
        return self.import_bytes(name, interop.to_file(name, directory, self.base_context(),
                                                       self.strict_base))

    def export(self, name: str, version: int | None, library: str) -> tuple[bytes, str, int]:
        """(zip of the files the library loads, its file name, the version exported)."""
        key = self.registry.resolve(name, version)
        meta = self.registry.metadata(key)
        loaded = self.store.load(key[0], key[1], self.registry.encoder.info, meta)
        files = interop.export(library, meta, fmt.join(loaded.adapter, loaded.head),
                               self.base_context())
        folder = f"{key[0]}-v{key[1]}-{library}"
        return pack_zip(files, folder), f"{folder}.zip", key[1]

    def delete(self, name: str, version: int | None = None) -> list[int]:
        return self.registry.delete(name, version)

    def reload(self) -> tuple[bool, int, int]:
        """Rescan the files now (changes made by hand, or lost by a crash); counts after it."""
        changed = self.registry.refresh(rescan=True)
        return changed, *self.registry.counts()

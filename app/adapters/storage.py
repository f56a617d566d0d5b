"""What every adapter store offers, whatever holds its versions (the `Store` interface), and the
checks its backends share: valid names, what a load verifies, what an import accepts."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from app.adapters import format as fmt
from app.adapters.format import AdapterMetadata
from app.adapters.index import Changes, Generation, IndexRow, Key, NameSummary, Stamp, StoreIndex
from app.constants import NAME_RE, WEIGHTS_FILE
from app.errors import InvalidAdapterError, InvalidNameError
from app.model.encoder import BaseModelInfo

Encoder = Callable[[AdapterMetadata], bytes]  # stored metadata -> the weights file's bytes


@dataclass(frozen=True)
class LoadedAdapter:
    meta: AdapterMetadata
    adapter: dict[str, Tensor]  # names as in tensor_shapes()
    head: dict[str, Tensor]  # head state_dict


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidNameError(
            f"invalid adapter name {name!r}: use 1-64 characters from a-z, 0-9, '_' and '-', "
            f"starting with a letter or digit"
        )
    return name


class Store(ABC):
    """Adapter versions `<name>/v<N>`, each a safetensors file and its metadata.

    Every backend keeps the same promises: a version becomes visible complete or not at all and
    never changes once written; concurrent writers (threads, processes, machines) get distinct
    version numbers; every load checks the sha256 and the tensors before anything uses them; an
    index (app.adapters.index) answers listings and tells pollers what changed in O(changes).
    The backend is picked from ADAPTERS_DIR by app.adapters.backends.
    """

    location: str  # as ADAPTERS_DIR names it: for messages and logs
    index: StoreIndex

    # ---------------------------------------------------------------- start-up and health
    @abstractmethod
    def open(self) -> None:
        """At start-up: check that the store can be used; the error names where it is."""

    @abstractmethod
    def check_readable(self) -> None:
        """Whether what serving reads can be read now (for /readyz); raises OSError if not."""

    @abstractmethod
    def clean_stale(self) -> None:
        """Remove what writers that died left behind; safe while others write."""

    # ---------------------------------------------------------------------------- reading
    @abstractmethod
    def names(self) -> list[str]:
        """Every name with a visible version, in order (from the versions, not the index)."""

    @abstractmethod
    def versions(self, name: str) -> list[int]:
        """The visible versions of `name`, oldest first (from the versions, not the index)."""

    @abstractmethod
    def metadata(self, name: str, version: int) -> AdapterMetadata: ...

    @abstractmethod
    def weights_path(self, name: str, version: int) -> Path:
        """A local file of the version's verified weights (what a download sends)."""

    @abstractmethod
    def where(self, name: str, version: int) -> str:
        """Where a version is kept, for people to read."""

    @abstractmethod
    def _weights(self, name: str, version: int, meta: AdapterMetadata) -> bytes:
        """The weights file's bytes, as the version described by `meta` holds them."""

    def load(self, name: str, version: int, base: BaseModelInfo,
             meta: AdapterMetadata | None = None) -> LoadedAdapter:
        """Read and validate one version: checksum, base, tensor names/shapes/dtypes, finiteness.
        `meta`: its metadata when the caller has read it already."""
        meta = meta or self.metadata(name, version)
        data = self._weights(name, version, meta)
        return verified(data, meta, base, f"adapter {name!r} v{version}")

    # -------------------------------------------------------------------------- the index
    def changes_since(self, generation: Generation) -> Changes:
        """Versions added, replaced or removed since `generation` (O(changes), from the index)."""
        return self.index.changes_since(generation)

    def page(self, after: str = "", prefix: str = "", limit: int = 100, contains: str = ""
             ) -> list[NameSummary]:
        """Names after `after` that start with `prefix` (and hold `contains`), in order, from
        the index."""
        return self.index.page(after, prefix, limit, contains)

    @abstractmethod
    def rescan(self) -> int:
        """Correct the index from the versions themselves (slow); returns the fixes."""

    # ---------------------------------------------------------------------------- writing
    def save(self, meta: AdapterMetadata, tensors: dict[str, Tensor]) -> AdapterMetadata:
        """Write a new version of meta.name (the next number); returns the stored metadata."""
        return self._save(meta, lambda stored: fmt.encode(stored, tensors))

    def import_bytes(self, name: str, data: bytes, base: BaseModelInfo) -> AdapterMetadata:
        """Store a self-describing adapter file trained elsewhere, validated like a load."""
        source = f"uploaded adapter for {validate_name(name)!r}"
        header = fmt.read_header(data, source)
        meta = fmt.embedded_metadata(header, source)
        meta = meta.model_copy(update={"name": name, "version": 0, "weights_sha256": ""})
        fmt.check_base(meta, base)
        fmt.decode(data, meta, source)  # every check a load makes; the tensors stay as they are
        return self._save(meta, lambda stored: fmt.with_metadata(data, header, stored, source))

    @abstractmethod
    def _save(self, meta: AdapterMetadata, encode: Encoder) -> AdapterMetadata:
        """Store `encode(stored)` as the next version, `stored` being `meta` with its number
        (and, once encoded, its checksum); returns `stored`."""

    @abstractmethod
    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version, or all; returns the versions removed (404 when none)."""


def stamped(meta: AdapterMetadata, data: bytes) -> AdapterMetadata:
    """`meta` with the checksum of its weights file."""
    return meta.model_copy(update={"weights_sha256": fmt.sha256(data)})


def checksum_problem(data: bytes, meta: AdapterMetadata, source: str) -> str | None:
    """Why `data` is not the weights file `meta` describes; None when it is."""
    found = fmt.sha256(data)
    if found == meta.weights_sha256:
        return None
    return (f"{source}: checksum mismatch: {WEIGHTS_FILE} is corrupt or was modified "
            f"(sha256 {found[:12]}, metadata says {meta.weights_sha256[:12]})")


def verified(data: bytes, meta: AdapterMetadata, base: BaseModelInfo, source: str
             ) -> LoadedAdapter:
    """The tensors of a weights file, after every check: checksum, base, header, finiteness."""
    problem = checksum_problem(data, meta, source)
    if problem is not None:
        raise InvalidAdapterError(problem)
    fmt.check_base(meta, base)
    adapter, head = fmt.split(fmt.decode(data, meta, source))
    return LoadedAdapter(meta, adapter, head)


def row_of(key: Key, meta: AdapterMetadata, stamp: Stamp) -> IndexRow:
    """What the index keeps of one version (the key, not the metadata, names it)."""
    return IndexRow(*key, meta.task_type, tuple(meta.labels), meta.created_at,
                    meta.weights_sha256, size=stamp[1], mtime_ns=stamp[0],
                    metrics=json.dumps(meta.stored_epoch_metrics))

"""The adapter store on S3-compatible object storage (AWS S3, MinIO, Ceph RGW): ADAPTERS_DIR =
s3://bucket/prefix.

A version is written as its weights, then its manifest (app.adapters.s3.layout), each with a
create-only write (If-None-Match: *): creating the weights claims the number, so a second writer
of vN, on any machine, moves on to vN+1; the manifest, written last, makes the version visible
whole. A delete first creates the version's tombstone (the version is gone, and its number never
comes back), then removes the rest. Every write and delete then appends to the change log
(app.adapters.s3.changelog).

Serving never waits on S3 for what this node has: the index (app.adapters.index, under
ADAPTER_CACHE_DIR) mirrors the store's versions and is kept current from the change log, one
listing per poll; a full listing of the store happens only at start-up, on reload and at the slow
rescan. Loads read the node's copy of the weights (app.adapters.s3.cache), fetched on first use
and checked against the manifest's sha256 before it is kept or used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.adapters import format as fmt
from app.adapters.format import AdapterMetadata
from app.adapters.index import Changes, Generation, IndexRow, Key, StoreIndex
from app.adapters.s3 import layout
from app.adapters.s3.bucket import CONNECTIONS, Bucket
from app.adapters.s3.cache import VersionCache
from app.adapters.s3.changelog import ChangeLog
from app.adapters.storage import Encoder, Store, checksum_problem, row_of, stamped, validate_name
from app.errors import (
    AdapterNotFoundError,
    InvalidAdapterError,
    ServiceError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)

STALE_WRITE_S = 3600.0  # weights without a manifest this old: their writer died


class S3Store(Store):
    def __init__(self, url: str, cache_dir: Path) -> None:
        self.bucket = Bucket(url)
        self.location = url
        home = cache_dir / self.bucket.name / self.bucket.prefix  # this store's, on this node
        self.cache = VersionCache(home)
        self.index = StoreIndex(home, None)  # a mirror, filled by _sync
        self.log = ChangeLog(self.bucket)
        self._sync_lock = threading.Lock()
        self._lock_file = home / ".sync.lock"
        self._unreachable = False  # said once per outage, not at every poll

    # ---------------------------------------------------------------- start-up and health
    def open(self) -> None:
        self.bucket.check()
        self.check_readable()

    def check_readable(self) -> None:
        """What serving reads: this node's copies (S3 being down only stops loads of others)."""
        self.cache.root.mkdir(parents=True, exist_ok=True)
        os.listdir(self.cache.root)

    def clean_stale(self) -> None:
        self.cache.clean()
        cutoff = time.time_ns() - int(STALE_WRITE_S * 1e9)
        for key, objects in layout.versions_listed(self.bucket.list()).items():
            for part in objects.leftovers(cutoff):
                self.bucket.delete(layout.version_key(key, part))
        self.log.prune()

    # ---------------------------------------------------------------------------- reading
    def names(self) -> list[str]:
        listed = layout.versions_listed(self.bucket.list())
        return sorted({name for (name, _), objects in listed.items() if objects.visible})

    def versions(self, name: str) -> list[int]:
        listed = layout.versions_listed(self.bucket.list(f"{validate_name(name)}/"))
        return sorted(v for (_, v), objects in listed.items() if objects.visible)

    def metadata(self, name: str, version: int) -> AdapterMetadata:
        key = (validate_name(name), version)
        sha256 = self.index.sha256(key)
        data = None if sha256 is None else self.cache.read(key, sha256)
        if data is None:
            return self._manifest(key)[0]
        source = f"adapter {name!r} v{version}"  # the copy embeds its metadata, but its checksum
        embedded = fmt.embedded_metadata(fmt.read_header(data, source), source)
        return embedded.model_copy(update={"weights_sha256": sha256})

    def weights_path(self, name: str, version: int) -> Path:
        self._weights(name, version, self.metadata(name, version))
        return self.cache.path((name, version))

    def where(self, name: str, version: int) -> str:
        return self.bucket.url_of(layout.version_key((validate_name(name), version)))

    def _weights(self, name: str, version: int, meta: AdapterMetadata) -> bytes:
        """This node's copy when it is the file `meta` describes; else fetched, checked, kept."""
        key = (name, version)
        data = self.cache.read(key, meta.weights_sha256)
        if data is not None:
            return data
        found = self.bucket.get(layout.version_key(key, layout.WEIGHTS))
        if found is None:
            raise AdapterNotFoundError(f"adapter {name!r} has no version {version}")
        problem = checksum_problem(found[0], meta, f"adapter {name!r} v{version}")
        if problem is not None:  # refused like a damaged local file, and never kept
            raise InvalidAdapterError(problem)
        self._keep(key, found[0])
        return found[0]

    def _keep(self, key: Key, data: bytes) -> None:
        try:
            self.cache.put(key, data)
        except OSError as exc:  # a full cache disk costs a fetch next time, not this load
            log.warning("cannot keep adapter %s v%d in %s: %s", *key, self.cache.root, exc)

    def _manifest(self, key: Key) -> tuple[AdapterMetadata, int, int]:
        """(metadata, weights size, when the manifest was written) of a version."""
        found = self.bucket.get(layout.version_key(key, layout.MANIFEST))
        if found is None:
            raise AdapterNotFoundError(f"adapter {key[0]!r} has no version {key[1]}")
        meta, size = layout.parse_manifest(found[0], f"adapter {key[0]!r} v{key[1]}")
        return meta, size, found[1].written_ns

    def _row(self, key: Key) -> IndexRow | None:
        """What the index keeps of a version, read from its manifest; None when gone or invalid."""
        try:
            meta, size, written = self._manifest(key)
        except AdapterNotFoundError:
            return None
        except InvalidAdapterError as exc:
            log.warning("not indexed: %s", exc.message)
            return None
        return row_of(key, meta, (written, size))

    # -------------------------------------------------------------------------- the index
    def changes_since(self, generation: Generation) -> Changes:
        """What the change log says since the last poll, applied to this node's index first;
        while S3 cannot be reached, what this node knows."""
        try:
            self._sync(everything=False)
        except StoreUnavailableError as exc:
            if not self._unreachable:
                log.warning("%s; serving the adapters this node knows until it answers",
                            exc.message)
            self._unreachable = True
        else:
            if self._unreachable:
                log.info("%s answers again", self.bucket.where)
            self._unreachable = False
        return self.index.changes_since(generation)

    def rescan(self) -> int:
        """Read every version's objects (a full listing) and correct this node's index."""
        return self._sync(everything=True)

    def _sync(self, everything: bool) -> int:
        """Bring this node's index up to date: from the change log, or (`everything`, a new
        index, or a log pruned past this node's position) from a full listing."""
        with self._sync_lock, _node_lock(self._lock_file):
            position = self.index.position()
            entries = None if everything or position is None else self.log.since(position)
            if entries is None:
                changed = self._sync_all()
            elif entries:
                keys = {entry.key for entry in entries}
                changed = self.index.mirror({key: self._row(key) for key in keys},
                                            entries[-1].seq)
            else:
                changed = {}
        for key, before in changed.items():
            if before is not None:  # replaced or deleted: this node's copy goes too
                self.cache.evict(key)
        return len(changed)

    def _sync_all(self) -> dict[Key, str | None]:
        newest = self.log.newest()  # before the listing: later entries are read again next time
        listed = layout.versions_listed(self.bucket.list())
        visible = {key: objects.stamp for key, objects in listed.items() if objects.visible}
        indexed = self.index.stamps()
        stale = sorted(key for key, stamp in visible.items() if indexed.get(key) != stamp)
        rows: dict[Key, IndexRow | None] = {}
        if stale:  # the manifests read side by side: a first start may read thousands
            with ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="s3-sync") as pool:
                rows = dict(zip(stale, pool.map(self._row, stale), strict=True))
        changed = self.index.mirror(rows, newest, listed=set(visible))
        if changed:
            log.info("store index: %d versions corrected from %s", len(changed), self.location)
        return changed

    # ---------------------------------------------------------------------------- writing
    def _save(self, meta: AdapterMetadata, encode: Encoder) -> AdapterMetadata:
        name = validate_name(meta.name)
        taken = layout.versions_listed(self.bucket.list(f"{name}/"))
        version = max((v for _, v in taken), default=0)
        while True:  # a writer elsewhere may claim a number first: then take the next one
            version += 1
            stored = meta.model_copy(update={"version": version})
            data = encode(stored)
            stored = stamped(stored, data)
            key = (name, version)
            if (self.bucket.create(layout.version_key(key, layout.WEIGHTS), data)
                    and self.bucket.create(layout.version_key(key, layout.MANIFEST),
                                           layout.manifest(stored, len(data)))):
                break
        self._keep(key, data)
        # Should the log be out of reach: what this node's index keeps until its next rescan.
        self._announce(key, row_of(key, stored, (int(time.time()) * 1_000_000_000, len(data))))
        log.info("stored adapter %s v%d in %s", name, version, self.location)
        return stored

    def delete(self, name: str, version: int | None = None) -> list[int]:
        versions = self.versions(name)
        targets = versions if version is None else [v for v in versions if v == version]
        # The tombstone is the claim: of deletes racing for a version, one removes it.
        removed = [v for v in targets
                   if self.bucket.create(layout.version_key((name, v), layout.TOMBSTONE), b"")]
        for v in removed:
            self.bucket.delete(layout.version_key((name, v), layout.MANIFEST))
            self._announce((name, v), None)
            self.bucket.delete(layout.version_key((name, v), layout.WEIGHTS))
            self.cache.evict((name, v))
        if not removed:
            what = f"version {version}" if version is not None else "versions"
            raise AdapterNotFoundError(f"adapter {name!r} has no {what}")
        return removed

    def _announce(self, key: Key, row: IndexRow | None) -> None:
        """Append the change to the log, for every node's poll. Should that fail, the change is
        made all the same: this node's index takes `row` now, the others see it at their next
        rescan."""
        try:
            self.log.append(key, after=self.index.position() or 0)
        except ServiceError as exc:
            log.error("cannot log the change of adapter %s v%d (%s); other nodes see it at "
                      "their next rescan", *key, exc.message)
            try:
                self.index.mirror({key: row}, None)
            except (sqlite3.Error, OSError):
                log.exception("nor record it in this node's index; its next rescan will")


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """One sync at a time among the processes of this node that share its index (the kernel
    drops the lock of a process that dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield

"""Adapter versions on disk: one directory per version, written atomically, validated on load."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from app.adapters import format as fmt
from app.adapters.dirs import TMP_PREFIX, list_dir, remove_if_abandoned, versions_in
from app.adapters.format import AdapterMetadata
from app.adapters.index import IndexRow, Key, Stamp, StoreIndex
from app.adapters.storage import Encoder, Store, row_of, stamped, validate_name
from app.constants import METADATA_FILE, NAME_RE, VERSION_DIR_PREFIX, WEIGHTS_FILE
from app.errors import AdapterNotFoundError, InvalidAdapterError, InvalidNameError, StoreWriteError

log = logging.getLogger(__name__)

TRASH_PREFIX = ".deleted-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _locked_temp_dir(name_dir: Path) -> Iterator[Path]:
    """A new temporary directory in name_dir, flock'ed by this process until the block ends.

    The kernel drops the lock when its holder dies, however it dies, so an unlocked temporary
    directory is one that clean_stale may remove, and a locked one belongs to a live writer.
    """
    for attempt in range(1, 11):
        # Not exist_ok: its is_dir() check after EEXIST fails when a delete removes the directory
        # in between. Whether the directory is there and usable, mkdtemp finds out.
        with contextlib.suppress(FileExistsError):
            name_dir.mkdir(parents=True)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=name_dir))
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:
            if attempt == 10:
                raise
            continue  # a concurrent delete or clean removed the directory: make another
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A cleaner may have locked and removed it before we held the lock: then retry.
            if _is_same_dir(fd, tmp):
                yield tmp
                return
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when it became a version
            os.close(fd)
    raise FileNotFoundError(errno.ENOENT, "temporary directories keep vanishing", str(name_dir))


def _is_same_dir(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class AdapterStore(Store):
    """The store in a local directory: `root/<name>/v<N>/{adapter.safetensors, adapter.json}`.

    A version becomes visible by renaming a complete temporary directory into place, so a crash
    at any moment leaves either the whole version or none of it. Versions never change after
    they are written; deleting renames them away first. Each writer then records the change in
    the index (app.adapters.index), which answers listings and pollers without touching the files.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.location = str(root)
        self._lock = threading.Lock()
        self.index = StoreIndex(self.root, self)

    # ------------------------------------------------------------------------------ reading
    def open(self) -> None:
        self.check_readable()

    def check_readable(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.listdir(self.root)

    def _name_dir(self, name: str) -> Path:
        path = self.root / validate_name(name)
        # A symlinked name directory must not lead outside the store.
        if path.exists() and not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidNameError(f"adapter {name!r} points outside the store")
        return path

    def _version_dir(self, name: str, version: int) -> Path:
        return self._name_dir(name) / f"{VERSION_DIR_PREFIX}{version}"

    def names(self) -> list[str]:
        return sorted(e.name for e in list_dir(self.root)
                      if e.is_dir() and NAME_RE.match(e.name) and self.versions(e.name))

    def versions(self, name: str) -> list[int]:
        return versions_in(self._name_dir(name))

    def weights_path(self, name: str, version: int) -> Path:
        return self._version_dir(name, version) / WEIGHTS_FILE

    def where(self, name: str, version: int) -> str:
        return str(self._version_dir(name, version))

    def stamp(self, name: str, version: int) -> tuple[int, int]:
        """(mtime_ns, size) of a version's weights: changes when the files are replaced."""
        st = self.weights_path(name, version).stat()
        return st.st_mtime_ns, st.st_size

    def snapshot(self) -> dict[Key, Stamp]:
        """Every visible version with its stamp, from the files (a full scan: see `rescan`).

        One listing per name and one stat per version: this is what a rescan costs.
        """
        result = {}
        for entry in list_dir(self.root):
            if not NAME_RE.match(entry.name) or not entry.is_dir():
                continue
            name_dir = self._name_dir(entry.name) if entry.is_symlink() else Path(entry.path)
            for version in versions_in(name_dir):
                try:
                    st = os.stat(name_dir / f"{VERSION_DIR_PREFIX}{version}" / WEIGHTS_FILE)
                except FileNotFoundError:
                    continue  # deleted while we looked
                result[(entry.name, version)] = (st.st_mtime_ns, st.st_size)
        return result

    def stamp_of(self, key: Key) -> Stamp | None:
        try:
            return self.stamp(*key)
        except FileNotFoundError:
            return None

    def index_row(self, key: Key) -> IndexRow | None:
        """What the index keeps of one version, read from its files; None when gone or invalid."""
        try:
            meta, stamp = self.metadata(*key), self.stamp(*key)
        except (AdapterNotFoundError, FileNotFoundError):
            return None
        except InvalidAdapterError as exc:
            log.warning("not indexed: %s", exc.message)
            return None
        return row_of(key, meta, stamp)  # the directory names it, as for every reader

    # ---------------------------------------------------------------------------- the index
    def rescan(self) -> int:
        """Correct the index from the files (slow: stats every version); returns the fixes."""
        return self.index.rescan()

    def _record(self, update: Callable[[], None], what: str) -> None:
        try:
            update()
        except (sqlite3.Error, OSError):  # the version is on disk, the source of truth
            log.exception("cannot record %s in the store index; the next rescan will", what)

    def metadata(self, name: str, version: int) -> AdapterMetadata:
        path = self._version_dir(name, version) / METADATA_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise AdapterNotFoundError(f"adapter {name!r} has no version {version}") from None
        return fmt.parse_metadata(raw, f"adapter {name!r} v{version}")

    def weights_bytes(self, name: str, version: int) -> bytes:
        try:
            return self.weights_path(name, version).read_bytes()
        except FileNotFoundError:
            raise AdapterNotFoundError(f"adapter {name!r} has no version {version}") from None

    def _weights(self, name: str, version: int, meta: AdapterMetadata) -> bytes:
        return self.weights_bytes(name, version)

    # ------------------------------------------------------------------------------ writing
    def _save(self, meta: AdapterMetadata, encode: Encoder) -> AdapterMetadata:
        name_dir = self._name_dir(meta.name)
        try:
            with _locked_temp_dir(name_dir) as tmp, self._lock:
                stored, stamp = self._commit(meta, encode, name_dir, tmp)
        except OSError as exc:
            raise StoreWriteError(
                f"cannot write adapter {meta.name!r} to the adapter store: "
                f"{exc.strerror or exc}; nothing was stored"
            ) from exc
        key = (stored.name, stored.version)
        self._record(lambda: self.index.put(row_of(key, stored, stamp)),
                     f"{key[0]} v{key[1]}")
        return stored

    def _commit(self, meta: AdapterMetadata, encode: Encoder, name_dir: Path,
                tmp: Path) -> tuple[AdapterMetadata, Stamp]:
        while True:  # another process may take a number first: then take the next one
            version = max(self.versions(meta.name), default=0) + 1
            stored = meta.model_copy(update={"version": version})
            data = encode(stored)
            stored = stamped(stored, data)
            _write_file(tmp / WEIGHTS_FILE, data)
            _write_file(tmp / METADATA_FILE, stored.model_dump_json(indent=2).encode())
            _fsync_dir(tmp)
            st = os.stat(tmp / WEIGHTS_FILE)  # the rename keeps it: the version's stamp
            try:
                os.rename(tmp, name_dir / f"{VERSION_DIR_PREFIX}{version}")
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            # The version is in place; a concurrent delete may have removed it, and the name with it.
            with contextlib.suppress(FileNotFoundError):
                _fsync_dir(name_dir)
            log.info("stored adapter %s v%d", meta.name, version)
            return stored, (st.st_mtime_ns, st.st_size)

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version, or all; returns the versions removed."""
        versions = self.versions(name)
        targets = versions if version is None else [v for v in versions if v == version]
        name_dir = self._name_dir(name)
        removed, trashed = [], []
        for v in targets:
            trash = name_dir / f"{TRASH_PREFIX}{v}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(name_dir / f"{VERSION_DIR_PREFIX}{v}", trash)  # gone in one step
            except FileNotFoundError:  # a concurrent delete took this version first
                continue
            removed.append(v)
            trashed.append(trash)
        if removed:
            self._record(lambda: self.index.remove([(name, v) for v in removed]),
                         f"the deletion of {name} {removed}")
        for trash in trashed:
            shutil.rmtree(trash, ignore_errors=True)
        if not removed:
            what = f"version {version}" if version is not None else "versions"
            raise AdapterNotFoundError(f"adapter {name!r} has no {what}")
        with contextlib.suppress(FileNotFoundError):  # a concurrent delete removed the name
            _fsync_dir(name_dir)
        if not self.versions(name):
            # rmdir, not rmtree: a writer's temporary directory in there must survive.
            with contextlib.suppress(OSError):
                name_dir.rmdir()
        return removed

    def clean_stale(self) -> None:
        """Remove temporary directories of writers that died, and trash left by a crash.

        Safe while other processes save into the store: their directories are locked.
        """
        for name_dir in list_dir(self.root):  # a name may vanish with its last version
            for entry in list_dir(Path(name_dir.path)):
                if entry.name.startswith(TRASH_PREFIX):
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif entry.name.startswith(TMP_PREFIX):
                    remove_if_abandoned(Path(entry.path))


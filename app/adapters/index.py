"""The store's index: one SQLite row per visible version, and a change log that pollers follow.

Why SQLite rather than a manifest file: several processes write the store at once (the server,
training workers, the CLI). SQLite gives each write a small transaction under a lock that the
kernel drops when its holder dies, so no writer rewrites a 10,000-entry manifest per import, and
in WAL mode readers never block writers. Every write appends to a change log whose last sequence
number is the store's generation: a poller asks "what changed since generation g?" with one
indexed query, O(1) when nothing did and O(changes) otherwise.

The files stay the truth. The index is rebuilt from them when it is missing, corrupt, of
another format or was never filled, and `rescan` (the slow periodic rescan) repairs what it may
miss: a version whose writer died between its rename and its index update, or one copied into
place by hand. Every decision of a rescan is checked again by a stat inside the write
transaction, so a rescan racing a writer in another process never undoes that writer's update.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from app.adapters import index_sql as sql
from app.constants import INDEX_FILE, INDEX_FORMAT

log = logging.getLogger(__name__)

Key = tuple[str, int]
Stamp = tuple[int, int]  # (mtime_ns, size) of a version's weights: changes when they are replaced
T = TypeVar("T")



@dataclass(frozen=True)
class IndexRow:
    """What listing and routing need of one version, without reading its files."""

    name: str
    version: int
    task_type: str
    labels: tuple[str, ...]
    created_at: str
    sha256: str
    size: int
    mtime_ns: int
    metrics: str = "{}"  # the stored epoch's validation metrics, as JSON

    @property
    def key(self) -> Key:
        return self.name, self.version

    @property
    def stamp(self) -> Stamp:
        return self.mtime_ns, self.size


@dataclass(frozen=True)
class NameSummary:
    """One adapter name for a listing: its versions and what its newest version is."""

    name: str
    versions: list[int]
    task_type: str
    labels: list[str]
    created_at: str
    size: int  # bytes of the newest version's weights file
    metrics: dict[str, Any]  # the newest version's validation metrics of its stored epoch


@dataclass(frozen=True)
class Generation:
    """A point in the store's history: the index file's epoch and its last change."""

    epoch: str = ""
    seq: int = 0


@dataclass(frozen=True)
class Changes:
    """What changed since a generation: key -> new stamp (None: removed).

    `complete`: the poller was too far behind (or the index was rebuilt), so `stamps` holds every
    version and a key absent from it is gone.
    """

    generation: Generation
    stamps: dict[Key, Stamp | None]
    complete: bool


class IndexSource(Protocol):
    """The files the index describes (the store)."""

    def snapshot(self) -> dict[Key, Stamp]: ...

    def stamp_of(self, key: Key) -> Stamp | None: ...

    def index_row(self, key: Key) -> IndexRow | None: ...


class StoreIndex:
    """`root/.index.sqlite3`: the versions, and a change log (see the module docstring).

    Without a `source`, the index mirrors a store whose truth is elsewhere (an object store):
    its owner reads that store and hands the index what it found (`mirror`); a new or rebuilt
    mirror starts empty, at no position, which tells its owner to read everything.
    """

    def __init__(self, root: Path, source: IndexSource | None) -> None:
        self.path = Path(root) / INDEX_FILE
        self._source = source
        self._lock = threading.RLock()  # one connection, shared by this process's threads
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._built_now = False

    # ------------------------------------------------------------------------------ queries
    def changes_since(self, since: Generation) -> Changes:
        return self._run(lambda db: _changes_since(db, since))

    def page(self, after: str, prefix: str, limit: int, contains: str = "") -> list[NameSummary]:
        """Up to `limit` names after `after` (in name order) that start with `prefix` and hold
        `contains`."""
        return self._run(lambda db: _page(db, after, prefix, limit, contains))

    # ------------------------------------------------------------------------------ changes
    def put(self, row: IndexRow) -> None:
        """Record a version its writer has just renamed into place."""
        self._run(lambda db: self._correct_all(db, {row.key: row}))

    def remove(self, keys: list[Key]) -> None:
        """Record versions their deleter has just renamed away."""
        self._run(lambda db: self._correct_all(db, dict.fromkeys(keys)))

    def rescan(self) -> int:
        """Bring the index in line with the files; returns how many versions it corrected."""
        return self._run(lambda db: 0 if self._built_now else self._reconcile(db))

    # ------------------------------------------------------------------------------ mirrors
    def mirror(self, rows: dict[Key, IndexRow | None], position: int | None,
               listed: set[Key] | None = None) -> dict[Key, str | None]:
        """Set each key's row as its owner read it (None: the version is gone); with `listed`,
        the keys of a full listing, remove every other key too. `position`: how far the owner
        has read its store's change log (None: unchanged). Returns the keys changed, each with
        the checksum it had (None: it was new)."""
        def apply(db: sqlite3.Connection) -> dict[Key, str | None]:
            with sql.transaction(db):
                before = {k: sql.sha256(db, k) for k in set(rows) | (
                    sql.stamps(db).keys() - listed if listed is not None else set())}
                changed = {k: sha for k, sha in before.items() if _set(db, k, rows.get(k))}
                if position is not None:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)",
                               (str(position),))
            return changed
        return self._run(apply)

    def position(self) -> int | None:
        """How far the owner of a mirror has read its store's change log; None: not yet."""
        found = self._run(lambda db: sql.meta(db, "position"))
        return None if found is None else int(found)

    def stamps(self) -> dict[Key, Stamp]:
        """Every indexed version and its stamp."""
        return self._run(sql.stamps)

    def sha256(self, key: Key) -> str | None:
        """The checksum of an indexed version's weights; None when it is not indexed."""
        return self._run(lambda db: sql.sha256(db, key))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._file_id = None, None

    # --------------------------------------------------------------------------- internals
    def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            self._built_now = False  # set by _db() when it had to build the index
            try:
                return op(self._db())
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in sql.CORRUPT:
                    raise
                log.warning("store index %s is corrupt (%s): rebuilding it from the files",
                            self.path, exc)
                self._discard()
                return op(self._db())

    def _db(self) -> sqlite3.Connection:
        """The open index; reopened when another process replaced the file, filled when new."""
        if self._conn is not None and sql.file_id(self.path) == self._file_id:
            return self._conn
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        self._file_id = sql.file_id(self.path)  # what _discard removes if this one is corrupt
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # the files are durable; this is derived
            if conn.execute("PRAGMA user_version").fetchone()[0] != INDEX_FORMAT:
                sql.create(conn)
            if self._source is not None and sql.meta(conn, "complete") != "1":
                log.info("building the store index %s from the files", self.path)
                self._reconcile(conn)
                self._built_now = True
        except BaseException:
            conn.close()  # half opened: the next call starts again
            raise
        self._conn = conn
        return conn

    def _discard(self) -> None:
        """Remove a corrupt index file, unless another process has replaced it already."""
        seen = self._file_id
        self.close()
        with open(self.path.with_name(INDEX_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if seen is not None and sql.file_id(self.path) != seen:
                return
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")

    def _reconcile(self, db: sqlite3.Connection) -> int:
        source = self._source
        if source is None:  # a mirror: its owner corrects it
            return 0
        on_disk = source.snapshot()
        indexed = sql.stamps(db)
        suspects = {k for k, s in on_disk.items() if indexed.get(k) != s} | (
            indexed.keys() - on_disk.keys())
        # Read before taking the write lock, so other processes' writers are not held up.
        read = {k: source.index_row(k) for k in suspects if k in on_disk}
        fixed = self._correct_all(db, {k: read.get(k) for k in suspects})
        db.execute("INSERT OR REPLACE INTO meta VALUES ('complete', '1')")
        if fixed:
            log.info("store index: %d versions corrected from the files", fixed)
        return fixed

    def _correct_all(self, db: sqlite3.Connection, rows: dict[Key, IndexRow | None]) -> int:
        """Make each key's row match its files as they are now, under the write lock.

        Checked again here because the caller looked earlier: a delete and a save of the same
        number, or a rescan and a writer in another process, may have overtaken it meanwhile.
        """
        with sql.transaction(db):
            return sum(self._correct(db, key, rows[key]) for key in sorted(rows))

    def _correct(self, db: sqlite3.Connection, key: Key, row: IndexRow | None) -> int:
        source = self._source
        assert source is not None  # put, remove and rescan: for an index of files
        stamp = source.stamp_of(key)  # now, not when the scan saw it
        if stamp is None:
            return sql.delete(db, key)
        if row is None or row.stamp != stamp:
            row = source.index_row(key)  # written or replaced since the scan read it
        return int(row is not None and _set(db, key, row))


# ---------------------------------------------------------------------------- SQL helpers
def _upsert(db: sqlite3.Connection, row: IndexRow) -> None:
    db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (row.name, row.version, row.task_type, json.dumps(list(row.labels)),
                row.created_at, row.sha256, row.size, row.mtime_ns, row.metrics))
    sql.log_change(db, row.key, row.stamp)


def _set(db: sqlite3.Connection, key: Key, row: IndexRow | None) -> bool:
    """Make key's row `row` (None: no row); whether that changed it."""
    if row is None:
        return bool(sql.delete(db, key))
    if sql.stamp(db, key) == row.stamp:
        return False
    _upsert(db, row)
    return True


def _changes_since(db: sqlite3.Connection, since: Generation) -> Changes:
    db.execute("BEGIN")  # one snapshot: the epoch, the log and (when needed) every version
    try:
        epoch = sql.meta(db, "epoch") or ""
        if epoch == since.epoch:
            found = db.execute("SELECT seq, name, version, mtime_ns, size FROM changes "
                               "WHERE seq > ? ORDER BY seq", (since.seq,)).fetchall()
            if not found or found[0][0] == since.seq + 1:  # else: pruned past `since`
                seq = found[-1][0] if found else since.seq
                stamps = {(n, v): (None if m is None else (m, s)) for _, n, v, m, s in found}
                return Changes(Generation(epoch, seq), stamps, complete=False)
        last = db.execute("SELECT max(seq) FROM changes").fetchone()[0] or 0
        return Changes(Generation(epoch, last), dict(sql.stamps(db)), complete=True)
    finally:
        db.execute("COMMIT")


def _page(db: sqlite3.Connection, after: str, prefix: str, limit: int, contains: str = ""
          ) -> list[NameSummary]:
    # Names are [a-z0-9_-]: every name that starts with `prefix` sorts below prefix + "~".
    rows = db.execute(
        "WITH page AS (SELECT DISTINCT name FROM versions WHERE name > ? AND name >= ? "
        "AND name < ? AND instr(name, ?) > 0 ORDER BY name LIMIT ?) "
        "SELECT name, version, task_type, labels, created_at, size, metrics FROM versions "
        "WHERE name IN page ORDER BY name, version", (after, prefix, prefix + "~", contains, limit))
    out = []
    for name, group in itertools.groupby(rows, key=lambda row: row[0]):
        found = list(group)
        _, _, task_type, labels, created_at, size, metrics = found[-1]  # the newest describes it
        out.append(NameSummary(name, [row[1] for row in found], task_type, json.loads(labels),
                               created_at, size, json.loads(metrics)))
    return out

"""The SQL of the store's index (app.adapters.index): its schema, its transactions, and the
statements that need none of the index's types."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

from app.constants import INDEX_FORMAT

Key = tuple[str, int]  # (name, version), as app.adapters.index.Key
Stamp = tuple[int, int]  # as app.adapters.index.Stamp

KEEP_CHANGES = 10_000  # change log entries kept; a poller further behind reads everything
CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (not in the type stubs)
SCHEMA = """
DROP TABLE IF EXISTS versions;
DROP TABLE IF EXISTS changes;
DROP TABLE IF EXISTS meta;
CREATE TABLE versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, task_type TEXT NOT NULL, labels TEXT NOT NULL,
    created_at TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (name, version)) WITHOUT ROWID;
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    mtime_ns INTEGER, size INTEGER);  -- NULL stamp: the version was removed
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")  # the write lock now, so what is read next stays true
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def create(db: sqlite3.Connection) -> None:
    """A new, empty index of this format, with a new epoch (pollers will read everything)."""
    with transaction(db):
        if db.execute("PRAGMA user_version").fetchone()[0] == INDEX_FORMAT:
            return  # another process created it meanwhile
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('epoch', ?), ('complete', '0')",
                   (uuid.uuid4().hex,))
        db.execute(f"PRAGMA user_version = {INDEX_FORMAT}")


def meta(db: sqlite3.Connection, key: str) -> str | None:
    found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if found is None else str(found[0])


def delete(db: sqlite3.Connection, key: Key) -> int:
    if db.execute("DELETE FROM versions WHERE name = ? AND version = ?", key).rowcount == 0:
        return 0
    log_change(db, key, None)
    return 1


def log_change(db: sqlite3.Connection, key: Key, stamp: Stamp | None) -> None:
    mtime_ns, size = stamp or (None, None)
    seq = db.execute("INSERT INTO changes (name, version, mtime_ns, size) VALUES (?, ?, ?, ?)",
                     (*key, mtime_ns, size)).lastrowid
    db.execute("DELETE FROM changes WHERE seq <= ?", ((seq or 0) - KEEP_CHANGES,))


def stamp(db: sqlite3.Connection, key: Key) -> Stamp | None:
    found = db.execute("SELECT mtime_ns, size FROM versions WHERE name = ? AND version = ?",
                       key).fetchone()
    return None if found is None else (found[0], found[1])


def sha256(db: sqlite3.Connection, key: Key) -> str | None:
    found = db.execute("SELECT sha256 FROM versions WHERE name = ? AND version = ?",
                       key).fetchone()
    return None if found is None else str(found[0])


def stamps(db: sqlite3.Connection) -> dict[Key, Stamp]:
    return {(n, v): (m, s) for n, v, m, s in
            db.execute("SELECT name, version, mtime_ns, size FROM versions")}

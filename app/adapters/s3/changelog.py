"""The store's change log on the object store: one small object per change, `_changes/<seq>.json`
naming the version that changed, each sequence number claimed by a create-only write.

A poller remembers the last number it read and asks for what follows with one listing
(StartAfter): one request per poll while fewer than 1,000 changes wait, and one read per change;
it never lists the versions. Writers keep the last KEEP_CHANGES entries; a poller that finds the
entry after its own gone (pruned) reads the whole store once instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from app.adapters.index import Key
from app.adapters.s3.bucket import Bucket
from app.adapters.s3.layout import CHANGES

KEEP_CHANGES = 1000  # one listing's worth: a node restarting finds the newest in one request
DIGITS = 16


@dataclass(frozen=True)
class Entry:
    seq: int
    key: Key  # the version to look at again: written, or deleted


def entry_key(seq: int) -> str:
    return f"{CHANGES}{seq:0{DIGITS}d}.json"


def _seq(key: str) -> int | None:
    number = key[len(CHANGES):].removesuffix(".json")
    return int(number) if key.startswith(CHANGES) and number.isdigit() else None


class ChangeLog:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def append(self, key: Key, after: int = 0) -> int:
        """Record a change of `key` as the next entry (looked for from `after`); its number."""
        body = json.dumps({"name": key[0], "version": key[1]}).encode()
        seq = self.newest(after)
        while not self.bucket.create(entry_key(seq + 1), body):
            seq = self.newest(seq + 1)  # others took it (and maybe more): look past them
        seq += 1
        if seq > KEEP_CHANGES:
            self.bucket.delete(entry_key(seq - KEEP_CHANGES))
        return seq

    def newest(self, after: int = 0) -> int:
        """The number of the newest entry (`after` when none follows it)."""
        seqs = self._listed(after)
        return seqs[-1] if seqs else after

    def since(self, seq: int) -> list[Entry] | None:
        """The entries after `seq`, in order; None when some of them were pruned."""
        seqs = self._listed(seq)
        if seqs and seqs[0] != seq + 1:
            return None
        entries = []
        for number in seqs:
            key = self._read(number)
            if key is None:
                return None
            entries.append(Entry(number, key))
        return entries

    def _read(self, seq: int) -> Key | None:
        """The version an entry names; None when it was pruned since the listing, or is not
        one of ours (then a full read of the store steps over it)."""
        found = self.bucket.get(entry_key(seq))
        try:
            item = json.loads(found[0]) if found is not None else None
            return None if item is None else (str(item["name"]), int(item["version"]))
        except (ValueError, KeyError, TypeError):
            return None

    def prune(self) -> None:
        """Remove entries older than the last KEEP_CHANGES (a writer that died kept them)."""
        seqs = self._listed(0)
        for number in seqs[:-KEEP_CHANGES]:
            self.bucket.delete(entry_key(number))

    def _listed(self, after: int) -> list[int]:
        listed = self.bucket.list(CHANGES, entry_key(after) if after else "")
        return [seq for item in listed if (seq := _seq(item.key)) is not None]

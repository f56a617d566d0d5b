"""This node's copies of the object store's adapters: `root/<name>/v<N>.safetensors`, each written
whole (temporary file, fsync, rename) and used only while its sha256 is the one the version's
manifest names, so a copy that was damaged, or of a version replaced elsewhere, is never served."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from app.adapters import format as fmt
from app.adapters.dirs import list_dir
from app.adapters.index import Key
from app.constants import VERSION_DIR_PREFIX

TMP_SUFFIX = ".tmp"
STALE_TMP_S = 3600.0  # a copy takes milliseconds: a temporary file this old lost its writer


class VersionCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: Key) -> Path:
        return self.root / key[0] / f"{VERSION_DIR_PREFIX}{key[1]}.safetensors"

    def read(self, key: Key, sha256: str) -> bytes | None:
        """The copy's bytes when it is the weights file with this checksum; None otherwise (a
        copy with another checksum is removed)."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        if fmt.sha256(data) == sha256:
            return data
        self.evict(key)
        return None

    def put(self, key: Key, data: bytes) -> None:
        """Keep a verified weights file (the caller checked it against its manifest)."""
        folder = self.path(key).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path(key).name}-", suffix=TMP_SUFFIX,
                                   dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))  # readers see the old copy or the new, never half
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def evict(self, key: Key) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def clean(self) -> None:
        """Remove temporary files that writers which died left behind."""
        cutoff = time.time() - STALE_TMP_S
        for folder in list_dir(self.root):
            for entry in list_dir(Path(folder.path)):
                if entry.name.endswith(TMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)

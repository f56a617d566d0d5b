"""Store directories: listings that survive concurrent deletes; cleaning what dead writers left."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from app.constants import VERSION_DIR_PREFIX

TMP_PREFIX = ".tmp-"  # a version being written: invisible to readers


def list_dir(path: Path) -> list[os.DirEntry[str]]:
    """The entries of a directory; none when it is missing or not a directory.

    Listing is the check: a concurrent delete may remove a name directory at any moment, so
    asking `is_dir()` first and listing next would only open a window for FileNotFoundError.
    """
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def versions_in(name_dir: Path) -> list[int]:
    found = []
    for entry in list_dir(name_dir):
        suffix = entry.name[len(VERSION_DIR_PREFIX):]
        if entry.name.startswith(VERSION_DIR_PREFIX) and suffix.isdigit() and entry.is_dir():
            found.append(int(suffix))
    return sorted(found)


def remove_if_abandoned(tmp: Path) -> None:
    """Remove a temporary directory whose writer has died (see locked_temp_dir)."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(tmp, ignore_errors=True)  # under the lock: no writer can take it now
    except OSError:
        pass  # locked: a writer is still at work in it
    finally:
        os.close(fd)

"""Host memory: what is available (the adapter tiers' default budgets derive from it), and
handing freed heap memory back to the OS. Under a steady load of tensors of varying sizes,
glibc keeps freed blocks in its per-thread arenas, so a server's resident memory creeps up
although nothing leaks (measured by bench/bench_load.py: +15 MiB/min without, flat with)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim  # glibc only; musl and macOS have none
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_malloc_trim = _find_malloc_trim()


def can_trim() -> bool:
    return _malloc_trim is not None


def trim() -> bool:
    """Release free heap pages; True when some were returned."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False


def available_bytes() -> int:
    """Memory this process can still use without swapping: the machine's MemAvailable, or less
    when a cgroup (a container's memory limit) leaves less."""
    available = _meminfo_available()
    room = _cgroup_room()
    return min(available, room) if room is not None else available


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _cgroup_room() -> int | None:
    """limit - usage of this process's cgroup (v2, else v1); None when unlimited or unknown."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes a huge number for "no limit"
            return None
        return max(0, int(limit) - usage)
    return None


def freeze_long_lived() -> int:
    """Collect garbage once, then exclude every object alive now from future collections
    (`gc.freeze`); returns how many objects are frozen in all.

    With thousands of adapters held in memory (their heads and metadata: about 90 objects each),
    a full collection that scans them all stops every thread for up to a second. Frozen objects
    are still freed by reference counting when dropped (an evicted adapter holds no reference
    cycle); only cyclic garbage alive at the moment of a freeze would stay, so freezes are rare:
    after the adapters held have settled.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

"""Hand freed heap memory back to the OS. Under a steady load of tensors of varying sizes,
glibc keeps freed blocks in its per-thread arenas, so a server's resident memory creeps up
although nothing leaks (measured by bench/bench_load.py: +15 MiB/min without, flat with)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
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

"""Loading adapters off the serving thread: on demand for queued requests, and in the background.

Demand loads (a request is waiting for this adapter) run on one thread at normal priority, one
future per version however many requests wait for it. Preloads (filling memory with stored
adapters while nothing asks for them) run on another thread at a lower scheduling priority, so
they use the CPU the serving thread leaves idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from app.adapters.index import Key

log = logging.getLogger(__name__)

PRELOAD_NICE = 10


class AdapterLoader:
    """Runs `fill(key, demand)`; `demand` is True for requests, False for preloads."""

    def __init__(self, fill: Callable[[Key, bool], None]) -> None:
        self._fill = fill
        self._lock = threading.Lock()
        self._inflight: dict[Key, Future[None]] = {}
        self._demand = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-loader")
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._wakeup = threading.Condition(self._lock)
        self._closed = False
        self._preloading: Key | None = None
        self._preloader: threading.Thread | None = None

    def request(self, key: Key) -> Future[None]:
        """A future that completes when `key` has been filled (or raises why it could not be)."""
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = self._demand.submit(self._run, key)
                self._inflight[key] = future
            return future

    def _run(self, key: Key) -> None:
        try:
            self._fill(key, True)
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def preload(self, keys: Iterable[Key]) -> None:
        """Queue `keys` for the background thread (started on first use), in order."""
        with self._lock:
            if self._closed:
                return
            for key in keys:
                if key not in self._queued:
                    self._queued.add(key)
                    self._queue.append(key)
            if self._preloader is None:
                self._preloader = threading.Thread(target=self._preload_loop, daemon=True,
                                                   name="adapter-preloader")
                self._preloader.start()
            self._wakeup.notify_all()

    def wait_preloaded(self, timeout: float | None = None) -> bool:
        """Block until every queued preload has been done (or skipped); False on timeout."""
        with self._lock:
            return self._wakeup.wait_for(
                lambda: self._closed or (not self._queue and self._preloading is None), timeout)

    def _preload_loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # per-thread on Linux; elsewhere as is
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PRELOAD_NICE)
        while True:
            with self._lock:
                self._preloading = None
                self._wakeup.notify_all()  # wait_preloaded() may be waiting for this
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if self._closed:
                    return
                key = self._queue.popleft()
                self._queued.discard(key)
                if key in self._inflight:
                    continue  # a request is loading it already
                self._preloading = key
            try:
                self._fill(key, False)
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the others
                log.warning("preloading adapter %s v%d failed: %s", key[0], key[1], exc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._queued.clear()
            self._wakeup.notify_all()
        self._demand.shutdown(wait=True, cancel_futures=True)
        if self._preloader is not None:
            self._preloader.join()

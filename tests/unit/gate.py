"""Batcher tests wait for states, not for time: a model call held at a gate, and event-loop polling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

# Only a safety net: each wait ends in microseconds unless the code under test is broken.
SAFETY_S = 10.0


class ModelGate:
    """Holds every batch inside the fake model (in the batcher's worker thread) until opened."""

    def __init__(self) -> None:
        self._entered = threading.Event()
        self._opened = threading.Event()

    def hold(self) -> None:
        """Called by the fake model: say a batch is in, then wait for the test to open."""
        self._entered.set()
        assert self._opened.wait(SAFETY_S), "the test never opened the gate"

    async def entered(self) -> None:
        """Return once a batch is in the model."""
        assert await asyncio.to_thread(self._entered.wait, SAFETY_S), "no batch reached the model"

    def open(self) -> None:
        self._opened.set()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until `condition()` holds.

    For states that other tasks on this loop reach (a request queued, stop() begun): each turn
    lets them run, so this ends within a few turns.
    """
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        await asyncio.sleep(0)

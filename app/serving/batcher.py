"""Dynamic batching: rows of many requests (any task) in, one model call per batch, results out.

A plain asyncio component with no knowledge of models or HTTP: it is given a `process`
function (a list of rows -> a list of results or exceptions, run in one worker thread) and a
`size_of` function (a row's length in tokens, for grouping rows of similar length).

Rows come in two lanes. Plain rows are one forward row each. Heavy rows (explanations) stand for
`width_of(row)` forward rows each, and a batch of them (a heavy pass) holds at most
`heavy_tokens` of longest row x widths. The lanes take turns: a plain row waits for at most one
heavy pass, and heavy rows get a pass after each round of plain batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.errors import OverloadedError

log = logging.getLogger(__name__)

T = TypeVar("T")
# How many batches' worth of waiting rows are sorted by length together.
GROUP_WINDOW_BATCHES = 4


@dataclass
class _Request(Generic[T]):
    rows: Sequence[T]
    future: asyncio.Future[list[Any]]
    results: list[Any]
    arrived: float = field(default_factory=time.monotonic)
    next_row: int = 0  # rows before it have been taken into a batch
    remaining: int = 0  # rows not yet answered

    @property
    def dead(self) -> bool:
        return self.future.done()  # cancelled by its caller, or already failed


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    wait_s: float = 0.002
    max_queue_rows: int = 4096
    enabled: bool = True  # off: each request is one batch of its own
    heavy_batch_tokens: int = 0  # a heavy pass's budget of longest row x widths; 0: max_batch_tokens

    @property
    def heavy_tokens(self) -> int:
        return self.heavy_batch_tokens or self.max_batch_tokens


def plan_batches(sizes: list[int], limits: BatchLimits) -> list[list[int]]:
    """Cut row indices into batches of similar length, each within the size and token budget.

    Sorting by length keeps padding low: a batch is padded only to its own longest row.
    """
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(sizes[i], max((sizes[j] for j in current), default=0))
        if current and (len(current) >= limits.max_batch_size
                        or longest * (len(current) + 1) > limits.max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Batcher(Generic[T]):
    """Queues rows; one worker task forms batches and runs `process` off the event loop."""

    def __init__(self, process: Callable[[list[T]], list[Any]], size_of: Callable[[T], int],
                 limits: BatchLimits, width_of: Callable[[T], int] = lambda row: 1) -> None:
        self._process = process
        self._size_of = size_of
        self._width_of = width_of
        self.limits = limits
        self._queue: deque[_Request[T]] = deque()
        self._heavy: deque[_Request[T]] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self.batches_run = 0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def closing(self) -> bool:
        """stop() has begun: new rows are refused while those already accepted are answered."""
        return self._closing

    @property
    def running(self) -> bool:
        """The batching task is alive (it stops only at shutdown, or on a bug)."""
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Refuse new rows, answer every row already queued or in a batch, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, rows: Sequence[T], heavy: bool = False) -> list[Any]:
        """Results for `rows`, in order. Raises the first error of any of its rows. Heavy rows
        each fit a heavy pass alone (a wider one runs alone)."""
        if not rows:
            return []
        if self._closing:
            raise OverloadedError("the service is shutting down; retry shortly", retry_after=1.0)
        if self._queued_rows + len(rows) > self.limits.max_queue_rows:
            raise OverloadedError(
                f"the inference queue is full ({self._queued_rows} rows waiting, limit "
                f"{self.limits.max_queue_rows}); retry shortly", retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        request = _Request(rows, loop.create_future(), [None] * len(rows), remaining=len(rows))
        (self._heavy if heavy else self._queue).append(request)
        self._queued_rows += len(rows)
        self._wakeup.set()
        try:
            return await request.future
        finally:
            if not request.future.done():  # the caller went away: drop its rows
                request.future.cancel()

    async def _run(self) -> None:
        heavy_turn = False
        while True:
            await self._wait_for_work()
            if self._closing and not self._queue and not self._heavy:
                return  # drained: everything taken has been answered
            if self._heavy and (heavy_turn or not self._queue):
                heavy_turn = False
                await self._run_batch(self._take_heavy())
                continue
            heavy_turn = True
            taken = self._take()
            if not taken:
                continue
            sizes = [self._size_of(req.rows[i]) for req, i in taken]
            plan = (plan_batches(sizes, self.limits) if self.limits.enabled
                    else [list(range(len(taken)))])
            for batch in plan:
                await self._run_batch([taken[i] for i in batch])

    async def _wait_for_work(self) -> None:
        while not self._queue and not self._heavy and not self._closing:
            self._wakeup.clear()
            await self._wakeup.wait()
        if (not self._queue or not self.limits.enabled or self.limits.wait_s <= 0
                or self._closing):
            return
        deadline = self._queue[0].arrived + self.limits.wait_s
        while self._queued_rows < self.limits.max_batch_size and not self._closing:
            delay = deadline - time.monotonic()
            if delay <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except TimeoutError:
                return

    def _take(self) -> list[tuple[_Request[T], int]]:
        """Up to a window of rows, oldest request first (one request when batching is off)."""
        limit = (self.limits.max_batch_size * GROUP_WINDOW_BATCHES if self.limits.enabled
                 else None)
        taken: list[tuple[_Request[T], int]] = []
        while self._queue and (limit is None or len(taken) < limit):
            req = self._queue[0]
            end = len(req.rows) if limit is None else min(len(req.rows),
                                                          req.next_row + limit - len(taken))
            if not req.dead:
                taken.extend((req, i) for i in range(req.next_row, end))
            self._queued_rows -= end - req.next_row
            req.next_row = end
            if end == len(req.rows):
                self._queue.popleft()
            if limit is None:
                break
        return taken

    def _take_heavy(self) -> list[tuple[_Request[T], int]]:
        """One heavy pass: rows in arrival order while longest x widths fits the budget (at
        least one row; with batching off, rows of one request only)."""
        taken: list[tuple[_Request[T], int]] = []
        longest = width = 0
        while self._heavy:
            req = self._heavy[0]
            if req.dead:
                self._queued_rows -= len(req.rows) - req.next_row
                self._heavy.popleft()
                continue
            row = req.rows[req.next_row]
            size, wide = max(longest, self._size_of(row)), width + self._width_of(row)
            if taken and size * wide > self.limits.heavy_tokens:
                break
            taken.append((req, req.next_row))
            longest, width = size, wide
            self._queued_rows -= 1
            req.next_row += 1
            if req.next_row == len(req.rows):
                self._heavy.popleft()
                if not self.limits.enabled:
                    break
        return taken

    async def _run_batch(self, batch: list[tuple[_Request[T], int]]) -> None:
        live = [(req, i) for req, i in batch if not req.dead]
        if not live:
            return
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._process, [req.rows[i] for req, i in live]
            )
        except Exception as exc:  # the whole batch failed: every caller hears why
            log.exception("batch of %d rows failed", len(live))
            outputs = [exc] * len(live)
        self.batches_run += 1
        for (req, i), out in zip(live, outputs, strict=True):
            if req.dead:
                continue
            if isinstance(out, Exception):
                req.future.set_exception(out)
                continue
            req.results[i] = out
            req.remaining -= 1
            if req.remaining == 0:
                req.future.set_result(req.results)

"""Stopping the batcher: every row already accepted is answered, new rows are refused."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import OverloadedError
from app.serving.batcher import Batcher, BatchLimits
from tests.unit.gate import SAFETY_S, ModelGate, until


def test_stop_answers_rows_in_the_model_and_rows_still_queued() -> None:
    async def main() -> None:
        gate = ModelGate()
        calls: list[list[int]] = []

        def process(rows: list[int]) -> list[int]:
            calls.append(list(rows))
            gate.hold()
            return [r * 10 for r in rows]

        b: Batcher[int] = Batcher(process, lambda r: 1, BatchLimits(max_batch_size=2, wait_s=0))
        await b.start()
        # Five rows: taken together, run as three batches; the first is in the model now.
        in_model = asyncio.create_task(b.submit([1, 2, 3, 4, 5]))
        await gate.entered()
        queued = asyncio.create_task(b.submit([6]))
        await until(lambda: b.queued_rows == 1, "[6] is queued")
        stopping = asyncio.create_task(b.stop())
        await until(lambda: b.closing, "stop() has begun")
        with pytest.raises(OverloadedError, match="shutting down"):
            await asyncio.wait_for(b.submit([7]), SAFETY_S)
        assert not stopping.done() and not in_model.done()
        gate.open()
        answers = await asyncio.wait_for(asyncio.gather(in_model, queued), SAFETY_S)
        assert answers == [[10, 20, 30, 40, 50], [60]]
        await asyncio.wait_for(stopping, SAFETY_S)
        assert sorted(r for c in calls for r in c) == [1, 2, 3, 4, 5, 6]
        assert b.queued_rows == 0

    asyncio.run(main())


def test_stop_of_an_idle_batcher_returns_at_once() -> None:
    async def main() -> None:
        # A batching window far longer than the safety net: a stop that waited for one fails.
        b: Batcher[int] = Batcher(lambda rows: rows, lambda r: 1,
                                  BatchLimits(max_batch_size=1, wait_s=60))
        await b.start()
        assert await b.submit([1]) == [1]  # a full batch: it does not wait for the window
        await asyncio.wait_for(b.stop(), SAFETY_S)

    asyncio.run(main())

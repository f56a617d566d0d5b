"""The batcher as a plain unit: ordering, splitting, no mixing, cancellation, back-pressure."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.errors import OverloadedError
from app.serving.batcher import Batcher, BatchLimits, plan_batches
from tests.unit.gate import ModelGate, until


def _echo_batcher(limits: BatchLimits, calls: list | None = None, gate: ModelGate | None = None
                  ) -> Batcher[tuple[str, int]]:
    """Rows are (request id, number); the model answers (request id, number * 10)."""

    def process(rows: list[tuple[str, int]]) -> list[object]:
        if calls is not None:
            calls.append(list(rows))
        if gate is not None:
            gate.hold()
        return [ValueError(f"bad row {r}") if n < 0 else (r, n * 10) for r, n in rows]

    return Batcher(process, lambda row: abs(row[1]) % 50 + 1, limits)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_plan_batches_groups_by_length_within_limits() -> None:
    sizes = [5, 50, 6, 49, 7, 48, 8]
    plan = plan_batches(sizes, BatchLimits(max_batch_size=3, max_batch_tokens=1000))
    assert plan == [[0, 2, 4], [6, 5, 3], [1]]
    tight = plan_batches([10] * 10, BatchLimits(max_batch_size=32, max_batch_tokens=40))
    assert [len(b) for b in tight] == [4, 4, 2]
    assert plan_batches([500], BatchLimits(max_batch_tokens=64)) == [[0]]  # never dropped


def test_many_concurrent_requests_get_exactly_their_own_rows_in_order() -> None:
    async def main() -> None:
        calls: list = []
        b = _echo_batcher(BatchLimits(max_batch_size=8, wait_s=0.005), calls=calls)
        await b.start()
        rng = random.Random(0)
        requests = {f"r{i}": [rng.randint(0, 999) for _ in range(rng.randint(1, 20))]
                    for i in range(60)}
        results = await asyncio.gather(*(b.submit([(rid, n) for n in nums])
                                         for rid, nums in requests.items()))
        for (rid, nums), got in zip(requests.items(), results, strict=True):
            assert got == [(rid, n * 10) for n in nums]
        assert max(len(c) for c in calls) == 8  # requests were batched together ...
        assert any(len({r for r, _ in c}) > 1 for c in calls)  # ... across requests
        assert b.queued_rows == 0
        await b.stop()

    run(main())


def test_a_large_request_is_split_across_batches() -> None:
    async def main() -> None:
        calls: list = []
        b = _echo_batcher(BatchLimits(max_batch_size=4, wait_s=0), calls=calls)
        await b.start()
        got = await b.submit([("big", n) for n in range(10)])
        assert got == [("big", n * 10) for n in range(10)]
        assert sorted(len(c) for c in calls) == [2, 4, 4]
        await b.stop()

    run(main())


def test_batching_off_runs_each_request_alone() -> None:
    async def main() -> None:
        calls: list = []
        gate = ModelGate()
        b = _echo_batcher(BatchLimits(enabled=False), calls=calls, gate=gate)
        await b.start()
        answers = asyncio.gather(*(b.submit([(f"r{i}", i), (f"r{i}", i + 1)]) for i in range(5)))
        await gate.entered()  # one request is in the model while the other four wait together
        await until(lambda: b.queued_rows == 8, "the other four requests are queued")
        gate.open()
        await answers
        assert all(len({r for r, _ in c}) == 1 for c in calls) and len(calls) == 5
        await b.stop()

    run(main())


def test_an_error_reaches_only_its_own_request() -> None:
    async def main() -> None:
        b = _echo_batcher(BatchLimits(wait_s=0.01))
        await b.start()
        good, bad = await asyncio.gather(b.submit([("good", 1)]), b.submit([("bad", -1)]),
                                         return_exceptions=True)
        assert good == [("good", 10)]
        assert isinstance(bad, ValueError) and "bad row" in str(bad)
        await b.stop()

    run(main())


def test_a_crashing_model_fails_the_batch_not_the_batcher() -> None:
    async def main() -> None:
        state = {"fail": True}

        def process(rows: list[int]) -> list[int]:
            if state.pop("fail", False):
                raise RuntimeError("kaput")
            return rows

        b: Batcher[int] = Batcher(process, lambda r: 1, BatchLimits(wait_s=0))
        await b.start()
        with pytest.raises(RuntimeError, match="kaput"):
            await b.submit([1])
        assert await b.submit([2]) == [2]
        await b.stop()

    run(main())


def test_cancelled_and_timed_out_requests_are_dropped_from_the_queue() -> None:
    async def main() -> None:
        calls: list = []
        gate = ModelGate()

        def process(rows: list[str]) -> list[str]:
            gate.hold()
            calls.append(list(rows))
            return rows

        b: Batcher[str] = Batcher(process, lambda r: 1, BatchLimits(max_batch_size=1, wait_s=0))
        await b.start()
        first = asyncio.create_task(b.submit(["first"]))
        await gate.entered()  # "first" is in the model now
        doomed = asyncio.create_task(b.submit(["doomed"]))
        with pytest.raises(TimeoutError):  # sure to time out: the model holds "first"
            await asyncio.wait_for(b.submit(["late"]), 0.05)
        assert b.queued_rows == 2  # "doomed" and "late" wait, "late" already abandoned
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        kept = asyncio.create_task(b.submit(["kept"]))
        await until(lambda: b.queued_rows == 3, '"kept" is queued behind them')
        gate.open()
        assert await first == ["first"] and await kept == ["kept"]
        assert ["doomed"] not in calls and ["late"] not in calls
        await b.stop()

    run(main())


def test_full_queue_is_refused_with_retry_after() -> None:
    async def main() -> None:
        gate = ModelGate()
        b: Batcher[int] = Batcher(lambda rows: (gate.hold(), rows)[1], lambda r: 1,
                                  BatchLimits(max_batch_size=2, wait_s=0, max_queue_rows=4))
        await b.start()
        running = asyncio.create_task(b.submit([0, 0]))
        await gate.entered()
        queued = asyncio.create_task(b.submit([1, 2, 3]))
        await until(lambda: b.queued_rows == 3, "the second request is queued")
        with pytest.raises(OverloadedError, match="queue is full") as err:
            await b.submit([4, 5])
        assert err.value.retry_after >= 1
        gate.open()
        assert await running == [0, 0] and await queued == [1, 2, 3]
        assert await b.submit([4, 5]) == [4, 5]  # room again
        await b.stop()

    run(main())


def _lanes_batcher(limits: BatchLimits, calls: list, gate: ModelGate | None = None
                   ) -> Batcher[tuple[str, int, int]]:
    """Rows are (name, tokens, width); heavy rows stand for `width` forward rows each."""

    def process(rows: list[tuple[str, int, int]]) -> list[str]:
        calls.append([name for name, _, _ in rows])
        if gate is not None:
            gate.hold()
        return [name for name, _, _ in rows]

    return Batcher(process, lambda row: row[1], limits, width_of=lambda row: row[2])


def test_a_heavy_pass_holds_rows_while_longest_times_widths_fits_its_budget() -> None:
    async def main() -> None:
        calls: list = []
        b = _lanes_batcher(BatchLimits(max_batch_tokens=1000, heavy_batch_tokens=100, wait_s=0),
                           calls)
        await b.start()
        rows = [(f"h{i}", 10, 4) for i in range(5)] + [("wide", 30, 5), ("h5", 5, 1)]
        assert await b.submit(rows, heavy=True) == [name for name, _, _ in rows]
        # 2 x 40 tokens fit 100; "wide" (150) runs alone; h5 after it would make 30 x 6
        assert calls == [["h0", "h1"], ["h2", "h3"], ["h4"], ["wide"], ["h5"]]
        assert b.queued_rows == 0
        await b.stop()

    run(main())


def test_a_plain_row_waits_for_one_heavy_pass_at_most() -> None:
    async def main() -> None:
        calls: list = []
        gate = ModelGate()
        b = _lanes_batcher(BatchLimits(heavy_batch_tokens=20, wait_s=0), calls, gate)
        await b.start()
        heavy = asyncio.create_task(b.submit([(f"h{i}", 10, 2) for i in range(4)], heavy=True))
        await gate.entered()  # the first heavy pass is in the model, three wait
        plain = asyncio.create_task(b.submit([("p0", 5, 1), ("p1", 5, 1)]))
        await until(lambda: b.queued_rows == 5, "the plain rows are queued")
        gate.open()
        assert await plain == ["p0", "p1"] and await heavy == ["h0", "h1", "h2", "h3"]
        assert calls == [["h0"], ["p0", "p1"], ["h1"], ["h2"], ["h3"]]
        await b.stop()

    run(main())


def test_heavy_rows_get_a_pass_after_each_round_of_plain_batches() -> None:
    async def main() -> None:
        calls: list = []
        gate = ModelGate()
        b = _lanes_batcher(BatchLimits(max_batch_size=2, wait_s=0), calls, gate)
        await b.start()
        first = asyncio.create_task(b.submit([("p0", 5, 1), ("p1", 5, 1)]))
        await gate.entered()
        heavy = asyncio.create_task(b.submit([("h0", 5, 3)], heavy=True))
        busy = asyncio.create_task(b.submit([(f"q{i}", 5, 1) for i in range(20)]))
        await until(lambda: b.queued_rows == 21, "the heavy row and 20 plain rows are queued")
        gate.open()
        await asyncio.gather(first, heavy, busy)
        assert calls[:2] == [["p0", "p1"], ["h0"]]  # not behind the 20 plain rows
        assert sorted(n for c in calls[2:] for n in c) == sorted(f"q{i}" for i in range(20))
        await b.stop()

    run(main())

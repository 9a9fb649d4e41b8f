"""The Coalescer (gateway calls, QueryEncoder batches): batching, per-item results, failures,
cancellation, the queue bound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from papersearch.coalesce import Coalescer
from papersearch.errors import Overloaded

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


class Downstream:
    """A batch callee that records its calls and answers when released."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.cancelled = 0

    async def send(self, items: list[int]) -> Sequence[int | BaseException]:
        self.calls.append(items)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def coalescer(send: Callable[[list[int]], Awaitable[Sequence[int | BaseException]]], *,
              max_batch: int = 8, max_in_flight: int = 1, max_pending: int = 100) -> (
    Coalescer[int, int]
):
    return Coalescer("test", send, max_batch=max_batch, max_in_flight=max_in_flight,
                     max_pending=max_pending)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def queue_behind(batcher: Coalescer[int, int], first: int, *queued: int) -> (
    list[asyncio.Task[int]]
):
    """``first`` takes the only call slot; ``queued`` wait behind it. Tasks in that order."""
    tasks = [asyncio.create_task(batcher.submit(first))]
    await settle()
    tasks += [asyncio.create_task(batcher.submit(item)) for item in queued]
    await settle()
    return tasks


def test_a_lone_request_leaves_at_once_and_later_ones_share_a_call() -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        down = Downstream()
        batcher = coalescer(down.send)
        first, *rest = await queue_behind(batcher, 1, 2, 3, 4)
        assert down.calls == [[1]]  # sent alone, without waiting for company
        assert batcher.pending == 3 and batcher.in_flight == 1
        down.release.set()
        results = await asyncio.gather(first, *rest)
        return down.calls, results

    calls, results = run(main)
    assert calls == [[1], [2, 3, 4]]
    assert results == [10, 20, 30, 40]


def test_a_lone_request_makes_its_call_from_its_own_task() -> None:
    """No task of the Coalescer's own to schedule first: the lone caller's task sends."""
    async def main() -> tuple[bool, int]:
        senders: list[asyncio.Task[object] | None] = []

        async def send(items: list[int]) -> Sequence[int]:
            senders.append(asyncio.current_task())
            return [i * 10 for i in items]

        batcher = coalescer(send)
        result = await batcher.submit(4)
        return senders == [asyncio.current_task()], result

    assert run(main) == (True, 40)


def test_batches_are_capped_and_calls_run_side_by_side() -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        down = Downstream()
        batcher = coalescer(down.send, max_batch=2, max_in_flight=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(7)]
        await settle()
        assert batcher.in_flight == 2
        down.release.set()
        return down.calls, list(await asyncio.gather(*tasks))

    calls, results = run(main)
    # Two calls leave at once ([0], [1]); the rest queue and leave two at a time.
    assert calls[:2] == [[0], [1]] and sorted(sum(calls, [])) == list(range(7))
    assert all(len(call) <= 2 for call in calls)
    assert results == [i * 10 for i in range(7)]


def test_a_failing_item_fails_alone() -> None:
    async def main() -> list[int | BaseException]:
        down = Downstream()
        batcher = coalescer(down.send)
        blocker = asyncio.create_task(batcher.submit(0))
        await settle()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in (5, -1, 6)]
        down.release.set()
        return list(await asyncio.gather(blocker, *tasks, return_exceptions=True))

    results = run(main)
    assert results[:2] == [0, 50] and results[3] == 60
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad -1"


def test_a_failing_call_fails_every_request_in_it() -> None:
    async def broken(items: list[int]) -> Sequence[int]:
        raise Overloaded("queue full", "serve.coalesce_max_pending")

    async def main() -> list[int | BaseException]:
        batcher = coalescer(broken, max_pending=10)
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(3)),
                                         return_exceptions=True))

    assert all(isinstance(r, Overloaded) for r in run(main))


def test_a_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    async def short(items: list[int]) -> Sequence[int]:
        return items[:-1]

    async def main() -> list[int | BaseException]:
        batcher = coalescer(short, max_pending=10)
        return list(await asyncio.wait_for(asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True), 5))

    assert any(isinstance(r, ValueError) for r in run(main))


def test_a_cancelled_queued_request_is_dropped() -> None:
    async def main() -> list[list[int]]:
        down = Downstream()
        batcher = coalescer(down.send)
        first, doomed, kept = await queue_behind(batcher, 1, 2, 3)
        doomed.cancel()
        await settle()
        assert batcher.pending == 1
        down.release.set()
        assert await first == 10 and await kept == 30
        return down.calls

    assert run(main) == [[1], [3]]


def test_a_call_whose_requests_are_all_cancelled_is_cancelled_downstream() -> None:
    async def main() -> tuple[int, int]:
        down = Downstream()
        batcher = coalescer(down.send)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(1), 0.05)  # a client's deadline
        await settle()
        return down.cancelled, batcher.in_flight

    assert run(main) == (1, 0)


def test_a_call_still_wanted_by_one_request_goes_on() -> None:
    async def shared() -> tuple[int, int]:
        down = Downstream()
        batcher = coalescer(down.send)
        blocker, leaving, staying = await queue_behind(batcher, 0, 1, 2)
        blocker.cancel()  # the blocker's call goes; [1, 2] leaves together
        await settle()
        assert down.calls[-1] == [1, 2]
        leaving.cancel()
        await settle()
        down.release.set()
        return await staying, down.cancelled

    # Only the blocker's call was cancelled downstream; [1, 2] still had a caller.
    assert run(shared) == (20, 1)


def test_a_batch_abandoned_before_it_starts_frees_its_slot() -> None:
    """The lone queued request is cancelled in the loop pass that hands it its batch call:
    the call task is cancelled before its first step (its coroutine never runs), and its slot
    must come back all the same, or every later request waits for ever."""
    async def main() -> tuple[int, int]:
        down = Downstream()
        batcher = coalescer(down.send)
        first, doomed = await queue_behind(batcher, 1, 2)
        down.release.set()  # the first call answers in the next pass, which also sees...
        doomed.cancel()  # ...[2] cancelled (its future at once, its task's handler later)
        await asyncio.gather(first, doomed, return_exceptions=True)
        await settle()
        in_flight = batcher.in_flight
        return in_flight, await asyncio.wait_for(batcher.submit(3), 5)

    assert run(main) == (0, 30)


def test_too_many_waiting_requests_are_refused() -> None:
    async def main() -> None:
        down = Downstream()
        batcher = coalescer(down.send, max_pending=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]  # 1 out, 2 queued
        await settle()
        with pytest.raises(Overloaded, match="2 requests queued"):
            await batcher.submit(9)
        down.release.set()
        assert await asyncio.gather(*tasks) == [0, 10, 20]

    run(main)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        Coalescer("test", Downstream().send, max_batch=0, max_in_flight=1, max_pending=1)

"""Concurrent one-item requests sent as few batch calls: the gateway's calls to a deployment,
and a QueryEncoder replica's ONNX batches.

Every Serve handle call costs CPU on both sides (router, serialisation, the replica's request
bookkeeping) whatever it carries; under load that, not the model, limited the gateway
(README, Throughput). A request that finds a call slot free and nobody queued makes its call
itself, alone, from its own coroutine: a lone query never waits for batch-mates, nor for a task
to be scheduled on the event loop first. Requests arriving while all ``max_in_flight`` calls
are out queue, and the next slot to free sends them together (at most ``max_batch`` per call).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from papersearch.errors import Overloaded

I = TypeVar("I")  # noqa: E741 (item)
O = TypeVar("O")  # noqa: E741 (its result)

# A batch call answers with one result per item, in order; an exception instance fails only
# its own item (e.g. one bad search among good ones).
Send = Callable[[list[I]], Awaitable[Sequence[O | BaseException]]]


class Coalescer(Generic[I, O]):
    """Batches concurrent ``submit`` calls into ``send`` calls.

    Cancellation: a request cancelled while queued (its client's deadline) is dropped; a batch
    call whose requests are all cancelled is cancelled, and so is its downstream call. A batch
    call that fails fails all its requests. Over ``max_pending`` queued requests: Overloaded.
    """

    def __init__(
        self, name: str, send: Send[I, O], *, max_batch: int, max_in_flight: int,
        max_pending: int,
    ) -> None:
        if min(max_batch, max_in_flight, max_pending) < 1:
            raise ValueError("max_batch, max_in_flight and max_pending must be >= 1")
        self.name = name
        self.send = send
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self._queue: list[tuple[I, asyncio.Future[O]]] = []
        self._calls: dict[asyncio.Task[None], list[asyncio.Future[O]]] = {}
        self._alone = 0  # calls made by a lone request from its own coroutine

    @property
    def in_flight(self) -> int:
        return len(self._calls) + self._alone

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def submit(self, item: I) -> O:
        if not self._queue and self.in_flight < self.max_in_flight:
            return await self._call_alone(item)
        if len(self._queue) >= self.max_pending:
            raise Overloaded(f"{self.name}: {len(self._queue)} requests queued",
                             "serve.coalesce_max_pending")
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(future)
            raise

    async def _call_alone(self, item: I) -> O:
        """Its cancellation cancels the downstream call: nobody else waits on it."""
        self._alone += 1
        try:
            results = await self.send([item])
        finally:
            self._alone -= 1
            self._dispatch()
        if len(results) != 1:
            raise ValueError(f"{self.name}: {len(results)} results for 1 request")
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue = [entry for entry in self._queue if not entry[1].done()]  # cancelled
        while self._queue and self.in_flight < self.max_in_flight:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            task = loop.create_task(self._call(batch))
            self._calls[task] = [future for _, future in batch]
            # the slot is freed when the task ends, however: a task cancelled before its first
            # step never runs its coroutine's finally
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)
        self._dispatch()

    async def _call(self, batch: list[tuple[I, asyncio.Future[O]]]) -> None:
        try:
            results = await self.send([item for item, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except asyncio.CancelledError:  # every request of the batch was cancelled
            for _, future in batch:
                future.cancel()
        except Exception as error:  # noqa: BLE001 (handed to each request's caller)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)

    def _abandon(self, future: asyncio.Future[O]) -> None:
        self._queue = [entry for entry in self._queue if entry[1] is not future]
        for task, futures in self._calls.items():
            if future in futures and all(f.done() for f in futures):
                task.cancel()

"""Tasks a cancelled caller leaves behind are not reported by asyncio as failures nobody read
("Task exception was never retrieved", an ERROR with a traceback at each client deadline or
disconnect during an upsert, a watch or a replica's encoding)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

from papersearch.autoscaling import BusyMeter
from papersearch.gateway.servicers import IndexServicer
from papersearch.tasks import forget


def unread_failures(scenario: Callable[[], Awaitable[None]]) -> list[str]:
    """What asyncio reported as never retrieved while ``scenario`` ran and its tasks went."""
    reported: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(str(context.get("message"))))
        await scenario()
        gc.collect()

    asyncio.run(main())
    return [message for message in reported if "never retrieved" in message]


def test_a_forgotten_task_fails_unread_without_a_report_and_its_failure_stays_readable() -> None:
    async def fails() -> None:
        raise RuntimeError("gone")

    async def read_later() -> None:
        task = asyncio.ensure_future(fails())
        forget(task)
        await asyncio.wait([task])
        assert isinstance(task.exception(), RuntimeError)

    async def left(forgotten: bool) -> None:
        task = asyncio.ensure_future(fails())
        if forgotten:
            forget(task)
        await asyncio.wait([task])

    assert unread_failures(lambda: left(True)) == []
    assert len(unread_failures(lambda: left(False))) == 1  # what asyncio does otherwise
    assert unread_failures(read_later) == []


def test_an_upsert_stream_that_ends_as_its_call_is_cancelled() -> None:
    """The stream's end (its client cancelled) and the handler's cancellation in one loop
    turn: the read's StopAsyncIteration was left unread."""

    async def scenario() -> None:
        ended = asyncio.Event()

        async def messages() -> AsyncIterator[Any]:
            await ended.wait()
            return
            yield  # an async generator that ends without a message

        servicer = cast(IndexServicer, SimpleNamespace(closing=asyncio.Event()))
        reading = IndexServicer._until_closing(servicer, messages())
        call = asyncio.ensure_future(anext(reading))
        for _ in range(3):  # the read waits on the stream
            await asyncio.sleep(0)
        ended.set()
        call.cancel()
        await asyncio.wait([call])
        assert call.cancelled()
        await cast(AsyncGenerator[Any, None], reading).aclose()

    assert unread_failures(scenario) == []


def test_an_encoding_whose_caller_was_cancelled_fails_unread_without_a_report() -> None:
    def work() -> None:
        time.sleep(0.05)
        raise RuntimeError("onnxruntime failed")

    async def scenario() -> None:
        call = asyncio.ensure_future(BusyMeter().in_thread(work))
        for _ in range(3):
            await asyncio.sleep(0)
        call.cancel()
        await asyncio.wait([call])
        assert call.cancelled()

    assert unread_failures(scenario) == []

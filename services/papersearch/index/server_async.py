"""The server backend on asyncio: how the gateway sends its reads and writes to Qdrant.

One ``AsyncQdrantClient`` per gateway replica, made on the gateway's event loop when first
needed. Its gRPC channels are reused by every request, and searches in flight at once go out at
once, with no worker thread per search and no pool size to tune: the gateway's own admission
limits them. Each request gets the blocking client's deadline and single retry (index/server.py),
the retry bounded here by what is left of ``index.timeout_s`` (writes included): a server that
stops answering costs the requests waiting on it one ``index.timeout_s``.

What is sent is decided by the Store's own programs (index/plan.py) and the server backend's
step-to-request table (``call_for``), so a search sends the same request whichever client sends
it. Opening the collection (create, identity check, payload indexes) stays with the blocking
ServerStore: once per gateway, in a worker thread.

A write's own work runs in a worker thread (``execute(..., off_loop=True)``): the program's
steps (the papers' BM25 vectors, their points) and each request's building. For a batch of 64
papers with 19,000-character abstracts that is ~90 ms of the ~130 ms the loop was held (the
rest, qdrant-client's conversion to gRPC messages and their serialization, happens inside its
call); a search's few steps stay on the loop, where a thread hop would cost more than they do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from qdrant_client import AsyncQdrantClient

from papersearch.index.errors import StoreUnavailable
from papersearch.index.plan import Program, Step, advance
from papersearch.index.server import (
    RETRY_PAUSE_S,
    call_for,
    client_options,
    errors,
    retry_budget,
    retrying,
)
from papersearch.settings import IndexSettings

T = TypeVar("T")
Runner = Callable[..., Any]  # asyncio.to_thread, or _here: runs a function, awaitably


async def _here(work: Callable[..., T], *args: Any) -> T:
    return work(*args)


def connect_async(settings: IndexSettings) -> AsyncQdrantClient:
    """An asyncio gRPC client for ``settings.url``; make it on the loop that will use it."""
    return AsyncQdrantClient(**client_options(settings))


class AsyncServerEngine:
    """Runs Store programs on one collection through an ``AsyncQdrantClient``."""

    def __init__(self, settings: IndexSettings, client: AsyncQdrantClient) -> None:
        self.settings = settings
        self.client = client
        self.name = settings.collection

    async def execute(self, program: Program[T], off_loop: bool = False) -> T:
        """Run a program (``Store.query_program`` and the like) to its result; ``off_loop``:
        its steps and requests built in a worker thread (writes)."""
        run = asyncio.to_thread if off_loop else _here
        finished, value = await run(advance, program, None)
        while not finished:
            finished, value = await run(advance, program, await self._do(value, run))
        return cast(T, value)

    async def close(self) -> None:
        await self.client.close()

    async def _do(self, step: Step, run: Runner) -> object:
        """As ServerStore._do: sent once more on StoreUnavailable, within ``timeout_s`` in all."""
        call = await run(call_for, step, self.name, self.settings.write_ordering)
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            with errors(call.operation):
                answer = call.result(await call.send(self.client, None))
        except StoreUnavailable as error:
            left = retry_budget(deadline, self.name, error)
            await asyncio.sleep(RETRY_PAUSE_S)
            try:  # bounded here: qdrant-client gives an upsert or a delete its whole client
                async with asyncio.timeout(left):  # timeout whatever it is asked
                    with errors(call.operation):
                        return call.result(await call.send(self.client, left))
            except TimeoutError as late:
                raise StoreUnavailable(f"qdrant {call.operation}: the retry had no answer in "
                                       f"the {left} s left of index.timeout_s") from late
        retrying.clear()
        return answer

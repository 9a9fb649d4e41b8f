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
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from qdrant_client import AsyncQdrantClient

from papersearch.index.errors import StoreUnavailable
from papersearch.index.plan import Program, Step
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


def connect_async(settings: IndexSettings) -> AsyncQdrantClient:
    """An asyncio gRPC client for ``settings.url``; make it on the loop that will use it."""
    return AsyncQdrantClient(**client_options(settings))


class AsyncServerEngine:
    """Runs Store programs on one collection through an ``AsyncQdrantClient``."""

    def __init__(self, settings: IndexSettings, client: AsyncQdrantClient) -> None:
        self.settings = settings
        self.client = client
        self.name = settings.collection

    async def execute(self, program: Program[T]) -> T:
        """Run a program (``Store.query_program`` and the like) to its result."""
        try:
            step = next(program)
            while True:
                step = program.send(await self._do(step))
        except StopIteration as done:
            result: T = done.value
            return result

    async def close(self) -> None:
        await self.client.close()

    async def _do(self, step: Step) -> object:
        """As ServerStore._do: sent once more on StoreUnavailable, within ``timeout_s`` in all."""
        call = call_for(step, self.name, self.settings.write_ordering)
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

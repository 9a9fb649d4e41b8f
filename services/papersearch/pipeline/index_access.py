"""The index as the serving gateway uses it: in its own process, with no Serve hop in between.

Qdrant is the scaled, replicated service: a deployment in front of it only added a handle hop and
a serialization each way per search (benchmarks/hops.py). The gateway opens the collection
(retriever/opener.py: never created by a read; ``upsert`` creates it) and runs each operation's
program (index/plan.py) without ever blocking the gRPC front's event loop:

- embedded (qdrant-edge, the local default): in one worker thread. The shard is not shared
  between threads, so its calls run one at a time, as on the in-process backend; the single
  gateway replica of the local Serve config owns it.
- Qdrant server: on the event loop itself, through one asyncio client (index/server_async.py):
  connections reused, concurrent searches sent at once, each request bounded by
  ``index.timeout_s`` (one retry included), so a server that stops answering costs the searches
  waiting on it one timeout, not one each. Opening the collection, once, takes the worker
  thread (the blocking client); a write's own work (its papers' BM25 vectors and points, ~90 ms
  for 64 long abstracts) is done in a worker thread too, its requests still sent by that client.

Either way at most ``serve.max_index_queue`` calls run or wait at once; past it a call is
refused at once (RESOURCE_EXHAUSTED), not queued behind the others until its deadline. While
calls succeed, readiness takes them as its proof instead of queueing a probe behind them.

Query-side BM25 terms are computed here too (Retriever), where the store is queried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import numpy as np
from qdrant_client import AsyncQdrantClient

from papersearch.corpus.paper import Paper
from papersearch.errors import NotReady, Overloaded
from papersearch.index.errors import CollectionMissing, PaperNotFound, StoreError
from papersearch.index.plan import Program, Step, advance
from papersearch.index.query import Examples, Hit, Mode, SearchFilter
from papersearch.index.server_async import AsyncServerEngine, connect_async
from papersearch.index.store import Indexed, Store
from papersearch.retriever.opener import CollectionOpener
from papersearch.retriever.retriever import Retrieved, Retriever
from papersearch.settings import IndexSettings

T = TypeVar("T")


class IndexAccess:
    def __init__(
        self, opener: CollectionOpener,
        make_client: Callable[[IndexSettings], AsyncQdrantClient] = connect_async,
    ) -> None:
        self.opener = opener
        self.make_client = make_client
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="index")
        self._retriever: Retriever | None = None
        self._engine: AsyncServerEngine | None = None
        self._closed = False
        self._in_flight = 0  # calls running or queued (readiness probes aside)
        self._succeeded_at = float("-inf")  # when a call last answered (monotonic)
        try:
            self.opener.open()
        except StoreError:  # logged by the opener; reads retry, readiness reports it
            pass

    async def retrieve(self, text: str, vector: np.ndarray | None, mode: Mode, limit: int,
                       flt: SearchFilter, explain: bool = False,
                       feedback: bool | None = None) -> Retrieved:
        return await self._execute(lambda r: r.retrieve_program(text, vector, mode, limit, flt,
                                                                explain, feedback))

    async def similar(self, examples: Examples, limit: int, flt: SearchFilter) -> list[Hit]:
        return await self._execute(lambda r: r.store.similar_program(examples, limit, flt))

    async def get(self, paper_id: str) -> Paper:
        return await self._execute(lambda r: r.get_program(paper_id))

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        return await self._execute(lambda r: r.upsert_program(papers, dense), create=True,
                                   write=True)

    async def delete(self, paper_ids: Sequence[str]) -> int:
        return await self._execute(lambda r: r.delete_program(paper_ids), write=True)

    async def papers(self, point_ids: Sequence[str]) -> list[Paper]:
        return await self._execute(lambda r: r.store.papers_program(point_ids))

    async def point_ids(self) -> list[str]:
        """Every point id (a migration's copy and match): embedded, page by page in the
        thread, searches between them (``stepwise``)."""
        return await self._execute(lambda r: r.store.point_ids_program(), stepwise=True)

    async def create(self) -> int:
        """Open the collection, creating it if absent; its point count."""
        return await self._execute(lambda r: r.store.probe_program(), create=True)

    async def indexed_since(self, since_ms: int, known: Mapping[str, int] | None
                            ) -> Indexed:
        return await self._execute(lambda r: r.store.indexed_since_program(since_ms, known))

    async def optimize(self) -> None:
        """After bulk writes (a migration's copy): the embedded shard's indexes built and
        persisted, as ``papersearch ingest`` does at its end (unbuilt, every dense search was
        exhaustive); a server does this itself."""
        await self._maintain(lambda store: store.optimize())

    async def flush(self) -> None:
        """Every acknowledged write persisted now (embedded; a server persists each write)."""
        await self._maintain(lambda store: store.flush())

    async def _maintain(self, work: Callable[[Store], None]) -> None:
        if self._closed:
            raise self._closed_error()
        retriever = self._retriever or await self._open(create=False)
        if retriever.store.backend == "embedded":
            await self._in_thread(lambda: work(retriever.store))

    async def ready(self) -> int:
        """Readiness: the collection open, reachable and ours; its point count."""
        return await self._execute(lambda r: r.store.probe_program(), admit=False)

    async def reachable(self) -> None:
        """Readiness as the health poll asks it: while calls run, one that answered within
        two polls' time (a poll waits ``health_poll_s`` after the last one ended) proves it (a
        probe would queue behind them, and under load time out and turn a busy gateway
        NOT_SERVING); otherwise ``ready``'s probe."""
        poll_s = self.opener.settings.serve.health_poll_s
        if self._in_flight and time.monotonic() - self._succeeded_at < 2 * poll_s:
            return
        await self.ready()

    async def close(self) -> None:
        """Close the clients (the embedded store flushed, after its thread's calls in progress).
        Calls in flight on the asyncio client are not waited for: the gateway drains first.
        Calls made later get NotReady (UNAVAILABLE: their client sends them again). A second
        close does nothing (a drained gateway's replica closes it again as Serve stops it)."""
        if self._closed:
            return
        self._closed = True
        if self._engine is not None:
            await self._engine.close()
        await asyncio.to_thread(self._close_store)

    def _close_store(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.opener.close()

    async def _execute(self, program: Callable[[Retriever], Program[T]], *,
                       create: bool = False, admit: bool = True, write: bool = False,
                       stepwise: bool = False) -> T:
        """``admit``: counted against serve.max_index_queue (a readiness probe is not);
        ``write``: the program run off the event loop on a server too; ``stepwise``: embedded,
        each of its steps one job of the thread, other calls' jobs between them (a scan of
        every point id, 1,024 a page, held the thread whole: 227 ms at 32,000 papers, every
        search waiting; a step each would cost a search a thread hop per step)."""
        if self._closed:
            raise self._closed_error()
        limit = self.opener.settings.serve.max_index_queue
        if admit and self._in_flight >= limit:
            raise Overloaded(f"{limit} index operations running or waiting in this gateway "
                             "(serve.max_index_queue)", "serve.max_index_queue")
        self._in_flight += int(admit)
        try:
            answer = await self._run(program, create, write, stepwise)
        finally:
            self._in_flight -= int(admit)
        self._succeeded_at = time.monotonic()
        return answer

    async def _run(self, program: Callable[[Retriever], Program[T]], create: bool,
                   write: bool, stepwise: bool) -> T:
        retriever = self._retriever or await self._open(create)
        if self._closed:  # closed while it opened: its engine would never be closed
            raise self._closed_error()
        try:
            if retriever.store.backend == "embedded" and stepwise:
                return await self._stepwise(retriever.store, program(retriever))
            if retriever.store.backend == "embedded":
                return await self._in_thread(lambda: retriever.store.execute(program(retriever)))
            if self._engine is None:  # made here: its channels belong to this event loop
                settings = retriever.store.settings
                self._engine = AsyncServerEngine(settings, self.make_client(settings))
            return await self._engine.execute(program(retriever), off_loop=write)
        except CollectionMissing:
            await self._let_go(retriever)
            raise
        except Exception as error:  # closed under the call: a server write's own work runs
            if self._closed and not isinstance(error, PaperNotFound):  # in a worker thread,
                raise self._closed_error() from error  # and met the store or client closed
            raise

    async def _stepwise(self, store: Store, program: Program[T]) -> T:
        def next_step(step: Step | None) -> tuple[bool, Any]:
            return advance(program, None if step is None else store.run_step(step))

        done, value = await self._in_thread(partial(next_step, None))
        while not done:
            done, value = await self._in_thread(partial(next_step, value))
        result: T = value
        return result

    async def _let_go(self, retriever: Retriever) -> None:
        """The collection was deleted since it was opened: its store is let go, so the next
        call opens it afresh (a read finds it missing until it is made again; a write, or an
        ingest, makes it). Kept, the store failed every call until a restart, and an embedded
        shard took writes into the deleted files once the directory was made again."""
        if self._retriever is not retriever:
            return  # another call let it go already
        self._retriever = None

        def close() -> None:
            with contextlib.suppress(StoreError):  # a flush into a deleted directory fails
                self.opener.close()

        await self._in_thread(close)

    async def _open(self, create: bool) -> Retriever:
        """The store opened in the worker thread: one attempt at a time (the opener spaces
        failed ones), then the same store for good."""
        store = await self._in_thread(lambda: self.opener.open(create=create))
        if self._retriever is None:
            self._retriever = Retriever(store)
        return self._retriever

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """``call`` in the collection's thread. A call still queued there when the collection
        closes is cancelled by the close, not by its caller: NotReady, as for later calls."""
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, call)
        except RuntimeError:  # the pool shut down since the check in _execute
            if self._closed:
                raise self._closed_error() from None
            raise
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and future.cancelled() and task is not None \
                    and not task.cancelling():
                raise self._closed_error() from None
            raise

    def _closed_error(self) -> NotReady:
        return NotReady(f"collection {self.opener.settings.index.collection} was closed (an "
                        "embedder migration finished, or the gateway is stopping): send the "
                        "call again")

"""The index as the serving gateway uses it: in its own process, with no Serve hop in between.

Qdrant is the scaled, replicated service: a deployment in front of it only added a handle hop and
a serialization each way per search (benchmarks/hops.py). The gateway opens the collection
(retriever/opener.py: never created by a read; ``upsert`` creates it) and runs every engine call
in worker threads, so the gRPC front's event loop never waits on the index:

- embedded (qdrant-edge, the local default): one thread. The shard is not shared between
  threads, so its calls run one at a time, as on the in-process backend; the single gateway
  replica of the local Serve config owns it.
- Qdrant server: up to ``SEARCH_WORKERS`` threads, so concurrent searches go out at once; each
  operation is bounded by ``index.timeout_s`` (one retry included, index/server.py), so a
  server that stops answering costs the searches waiting on it one timeout, not one each.

Query-side BM25 terms are computed here too (Retriever), where the store is queried.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from papersearch.corpus.paper import Paper
from papersearch.index.errors import StoreError
from papersearch.index.query import Hit, Mode, SearchFilter
from papersearch.retriever.opener import CollectionOpener
from papersearch.retriever.retriever import Retriever

T = TypeVar("T")
SEARCH_WORKERS = 16  # server backend: engine calls at once per gateway


class IndexAccess:
    def __init__(self, opener: CollectionOpener) -> None:
        self.opener = opener
        workers = 1 if opener.settings.index.backend == "embedded" else SEARCH_WORKERS
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="index")
        self._retriever: Retriever | None = None
        self._opening = threading.Lock()  # server backend: several threads may ask at once
        try:
            self.opener.open()
        except StoreError:  # logged by the opener; reads retry, readiness reports it
            pass

    async def search(self, text: str, vector: np.ndarray | None, mode: Mode, limit: int,
                     flt: SearchFilter) -> list[Hit]:
        return await self._run(lambda: self._open().search(text, vector, mode=mode,
                                                           limit=limit, filter=flt))

    async def similar(self, paper_id: str, limit: int, flt: SearchFilter) -> list[Hit]:
        return await self._run(lambda: self._open().similar(paper_id, limit, flt))

    async def get(self, paper_id: str) -> Paper:
        return await self._run(lambda: self._open().get(paper_id))

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        return await self._run(lambda: self._open(create=True).upsert(papers, dense))

    async def delete(self, paper_ids: Sequence[str]) -> int:
        return await self._run(lambda: self._open().delete(paper_ids))

    async def ready(self) -> int:
        """Readiness: the collection open, reachable and ours; its point count."""
        return await self._run(lambda: self._open().store.probe())

    def close(self) -> None:
        """Wait for the engine calls in progress, then close (flush) the store."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.opener.close()

    def _open(self, *, create: bool = False) -> Retriever:
        with self._opening:
            store = self.opener.open(create=create)  # once open, always the same store
            if self._retriever is None:
                self._retriever = Retriever(store)
            return self._retriever

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

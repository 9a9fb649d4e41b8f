"""What the pipeline needs from the encoder, index and reranker, as awaitables.

Serving implements it with Ray Serve deployment handles (pipeline/serve_backend.py); in-process use
(CLI, tests, benchmarks) with the plain runtime classes, here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.index.query import Examples, Hit, Mode, SearchFilter
from papersearch.index.store import Indexed, Store
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retrieved, Retriever


class Backend(Protocol):
    has_reranker: bool

    def pinned(self) -> Backend:
        """This backend for one request's steps: they all use the collection view (embedder
        and collection) its first step found (pipeline/collections.py)."""
        ...

    async def embedder_sha(self) -> str:
        """The identity of the embedder whose vectors the (pinned) collection holds."""
        ...

    async def encode_query(self, text: str) -> np.ndarray: ...

    async def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    async def retrieve(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter,
        explain: bool = False, feedback: bool | None = None,
    ) -> Retrieved: ...

    async def rerank(self, query: str, passages: Sequence[str]) -> np.ndarray: ...

    async def similar(self, examples: Examples, limit: int, flt: SearchFilter) -> list[Hit]: ...

    async def get(self, paper_id: str) -> Paper: ...

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int: ...

    async def delete(self, paper_ids: Sequence[str]) -> int: ...

    async def indexed_since(self, since_ms: int, known: Mapping[str, int] | None
                            ) -> Indexed: ...

    def swapped_at_ms(self) -> int | None:
        """When an embedder migration last swapped the live collection (indexed_since's
        clock); None where none did, or the backend follows no collection pointer."""
        ...

    async def ready(self) -> bool: ...


class LocalBackend:
    """The runtime classes in this process. Model inference runs in worker threads; store
    calls are short and run on the event loop, one at a time (the engine is not shared)."""

    def __init__(self, encoder: Encoder, store: Store, reranker: Reranker | None) -> None:
        self.encoder = encoder
        self.store = store
        self.retriever = Retriever(store)
        self.reranker = reranker
        self.has_reranker = reranker is not None
        self._store_lock = asyncio.Lock()  # one engine call at a time

    def pinned(self) -> LocalBackend:
        return self  # one collection and one embedder for its lifetime

    async def embedder_sha(self) -> str:
        return self.encoder.sha256

    async def encode_query(self, text: str) -> np.ndarray:
        return (await asyncio.to_thread(self.encoder.encode_queries, [text]))[0]

    async def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encoder.encode_documents, texts)

    async def retrieve(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter,
        explain: bool = False, feedback: bool | None = None,
    ) -> Retrieved:
        async with self._store_lock:
            return self.store.execute(self.retriever.retrieve_program(
                text, vector, mode, limit, flt, explain, feedback))

    async def rerank(self, query: str, passages: Sequence[str]) -> np.ndarray:
        if self.reranker is None:
            raise RuntimeError("no reranker loaded")
        return await asyncio.to_thread(self.reranker.score, query, passages)

    async def similar(self, examples: Examples, limit: int, flt: SearchFilter) -> list[Hit]:
        async with self._store_lock:
            return self.retriever.similar(examples, limit, flt)

    async def get(self, paper_id: str) -> Paper:
        async with self._store_lock:
            return self.retriever.get(paper_id)

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        async with self._store_lock:
            return self.retriever.upsert(papers, dense)

    async def delete(self, paper_ids: Sequence[str]) -> int:
        async with self._store_lock:
            return self.retriever.delete(paper_ids)

    async def indexed_since(self, since_ms: int, known: Mapping[str, int] | None
                            ) -> Indexed:
        async with self._store_lock:
            return self.store.indexed_since(since_ms, known)

    def swapped_at_ms(self) -> int | None:
        return None  # one collection, opened as it is: no migration swaps it

    async def ready(self) -> bool:
        async with self._store_lock:
            self.store.probe()
        return True

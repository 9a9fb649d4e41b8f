"""Dense, sparse (BM25) and hybrid search over the index for an already-encoded query."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from papersearch.corpus.paper import Paper, point_id
from papersearch.index.errors import PaperNotFound, StoreUnavailable
from papersearch.index.query import Hit, Mode, SearchFilter, SearchRequest
from papersearch.index.sparse import Bm25Encoder
from papersearch.index.store import Store

SEARCH_WORKERS = 16  # threads per coalesced call to a Qdrant server


@dataclass(frozen=True, slots=True)
class Retrieval:
    """One first-stage search: the query's text (for BM25) and vector (for dense)."""

    text: str
    vector: np.ndarray | None
    mode: Mode = "hybrid"
    limit: int = 10
    filter: SearchFilter = field(default_factory=SearchFilter)


class Retriever:
    """Turns (query text, query vector) into a Qdrant request, and papers into points: BM25
    terms are computed here, for queries and documents alike."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.bm25 = Bm25Encoder()

    def search(
        self,
        text: str,
        vector: np.ndarray | Sequence[float] | None,
        *,
        mode: Mode = "hybrid",
        limit: int = 10,
        filter: SearchFilter | None = None,
    ) -> list[Hit]:
        sparse = self.bm25.query(text) if mode in ("sparse", "hybrid") else None
        if sparse is not None and len(sparse) == 0 and mode == "sparse":
            return []  # only stopwords or punctuation: nothing can match lexically
        if sparse is not None and len(sparse) == 0:
            mode, sparse = "dense", None
        request = SearchRequest(
            mode=mode,
            dense=vector if mode != "sparse" else None,
            sparse=sparse,
            limit=limit,
            filter=filter or SearchFilter(),
        )
        return self.store.query(request)

    def search_each(self, requests: Sequence[Retrieval]) -> list[list[Hit] | Exception]:
        """Several searches, one after another; a failing one fails alone (its exception is
        its result), so a batch of other callers' searches is not lost with it."""
        results: list[list[Hit] | Exception] = []
        for r in requests:
            try:
                results.append(self.search(r.text, r.vector, mode=r.mode, limit=r.limit,
                                           filter=r.filter))
            except Exception as error:  # noqa: BLE001 (returned to its own caller)
                results.append(error)
        return results

    def search_concurrently(self, requests: Sequence[Retrieval], timeout_s: float,
                            workers: int = SEARCH_WORKERS) -> list[list[Hit] | Exception]:
        """``search_each`` for a store across the network: the searches go out at once (at
        most ``workers`` threads), and all of them are answered within ``timeout_s``: one
        without an answer by then gets StoreUnavailable (its thread ends at the store's own
        deadline, which ``timeout_s`` should match), so a server that stops answering costs
        one timeout for the batch, not one per search."""
        if len(requests) <= 1:
            return self.search_each(requests)
        deadline = time.monotonic() + timeout_s
        pool = ThreadPoolExecutor(min(workers, len(requests)), "retriever-search")
        try:
            pending = [pool.submit(self.search_each, [r]) for r in requests]
            return [_within(f, deadline, timeout_s) for f in pending]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def similar(self, paper_id: str, limit: int = 10, filter: SearchFilter | None = None) -> (
        list[Hit]
    ):
        return self.store.similar(paper_id, limit, filter)

    def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        """Write papers with their dense vectors; the BM25 vectors come from their text."""
        return self.store.upsert(papers, dense, self.bm25.documents(p.text for p in papers))

    def delete(self, paper_ids: Sequence[str]) -> int:
        """Delete papers; returns how many of them were stored (each id once). Counted by point
        id alone, without reading payloads."""
        present = self.store.existing_ids(point_id(pid) for pid in paper_ids)
        self.store.delete(paper_ids)
        return len(present)

    def get(self, paper_id: str) -> Paper:
        papers = self.store.get([paper_id])
        if not papers:
            raise PaperNotFound(paper_id)
        return papers[0]


def _within(pending: Future[list[list[Hit] | Exception]], deadline: float,
            timeout_s: float) -> list[Hit] | Exception:
    try:
        (result,) = pending.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        pending.cancel()  # not started yet: it never will be
        return StoreUnavailable(f"the index did not answer within {timeout_s:g} s")
    return result

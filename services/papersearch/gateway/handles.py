"""The pipeline's Backend over Ray Serve deployment handles.

Query encoding and retrieval, two calls per search, go through Coalescers: concurrent searches
share calls. A cancelled await (client deadline) cancels the downstream request; Serve's
back-pressure and "no replica" errors become the gateway's Overloaded and NotReady.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from papersearch.corpus.paper import Paper
from papersearch.gateway.coalesce import Coalescer
from papersearch.gateway.errors import NotReady, Overloaded
from papersearch.index.query import Hit, Mode, SearchFilter
from papersearch.retriever.retriever import Retrieval
from papersearch.settings import Settings


async def call(response: DeploymentResponse) -> Any:
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise
    except BackPressureError as error:
        raise Overloaded(str(error)) from None
    except DeploymentUnavailableError as error:
        raise NotReady(str(error)) from None


class HandleBackend:
    has_reranker = True

    def __init__(
        self,
        encoder: DeploymentHandle,
        retriever: DeploymentHandle,
        reranker: DeploymentHandle,
        settings: Settings,
    ) -> None:
        self.encoder = encoder
        self.retriever = retriever
        self.reranker = reranker
        serve = settings.serve
        self._encode: Coalescer[str, np.ndarray] = Coalescer(
            "QueryEncoder", self._encode_many, max_batch=serve.coalesce_max_batch,
            max_in_flight=serve.coalesce_in_flight, max_pending=serve.coalesce_max_pending)
        # The embedded engine answers one call at a time on its replica's loop: a second call
        # out would only wait there, so one goes out and the rest gather for the next.
        embedded = settings.index.backend == "embedded"
        self._retrieve: Coalescer[Retrieval, list[Hit]] = Coalescer(
            "Retriever", self._retrieve_many, max_batch=serve.coalesce_max_batch,
            max_in_flight=1 if embedded else serve.coalesce_in_flight,
            max_pending=serve.coalesce_max_pending)

    async def _encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return list(await call(self.encoder.encode.remote(texts)))

    async def _retrieve_many(self, requests: list[Retrieval]) -> list[list[Hit] | Exception]:
        return await call(self.retriever.search.remote(requests))  # type: ignore[no-any-return]

    async def encode_query(self, text: str) -> np.ndarray:
        return await self._encode.submit(text)

    async def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return await call(self.encoder.encode_documents.remote(list(texts)))

    async def retrieve(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter
    ) -> list[Hit]:
        return await self._retrieve.submit(Retrieval(text, vector, mode, limit, flt))

    async def rerank(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return await call(self.reranker.score.remote((query, list(passages))))

    async def similar(self, paper_id: str, limit: int, flt: SearchFilter) -> list[Hit]:
        return await call(self.retriever.similar.remote(paper_id, limit, flt))

    async def get(self, paper_id: str) -> Paper:
        return await call(self.retriever.get.remote(paper_id))

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        return await call(self.retriever.upsert.remote(list(papers), dense))

    async def delete(self, paper_ids: Sequence[str]) -> int:
        return await call(self.retriever.delete.remote(list(paper_ids)))

    async def ready(self) -> bool:
        await call(self.encoder.identity.remote())
        await call(self.retriever.count.remote())
        return True

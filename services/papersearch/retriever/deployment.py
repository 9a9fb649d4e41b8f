"""Retriever: owns the Qdrant store for the app. With the embedded engine one process owns
the shard, so the Serve config pins it to one replica; with a Qdrant server it scales out.

The replica starts whether or not the collection exists (retriever/opener.py): reads and
``ready`` fail with CollectionMissing (the gateway: NOT_SERVING) until it does; only ``upsert``
creates it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from ray import serve

from papersearch.corpus.paper import Paper
from papersearch.index.errors import StoreError
from papersearch.index.query import Hit, SearchFilter
from papersearch.models.manifest import model_dir, read_manifest
from papersearch.retriever.opener import CollectionOpener
from papersearch.retriever.retriever import Retrieval, Retriever
from papersearch.settings import Settings

T = TypeVar("T")


async def _inline(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return function(*args, **kwargs)


@serve.deployment(name="Retriever")
class RetrieverDeployment:
    def __init__(self, settings: Settings) -> None:
        manifest = read_manifest(
            model_dir(settings.models.repository, settings.models.embedder_name)
        )
        self.opener = CollectionOpener(settings, manifest.dim or 0, manifest.sha256)
        self._retriever: Retriever | None = None
        # The embedded engine answers in-process within a few milliseconds: its calls run on
        # the replica's event loop, one at a time, without the hop to a worker thread that a
        # sync method costs (~0.7 ms a call here). A Qdrant server's calls wait on the network,
        # so they run in threads and overlap.
        self._run = _inline if settings.index.backend == "embedded" else asyncio.to_thread
        try:
            self.opener.open()
        except StoreError:  # logged by the opener; reads retry, readiness reports it
            pass

    def retriever(self, *, create: bool = False) -> Retriever:
        store = self.opener.open(create=create)
        if self._retriever is None or self._retriever.store is not store:
            self._retriever = Retriever(store)
        return self._retriever

    async def search(self, requests: list[Retrieval]) -> list[list[Hit] | Exception]:
        """The concurrent searches a gateway coalesced into this call, each with its result.
        Against a Qdrant server they go out at once, all answered within ``index.timeout_s``."""

        def search() -> list[list[Hit] | Exception]:
            retriever = self.retriever()
            store = retriever.store
            if store.backend == "embedded":
                return retriever.search_each(requests)
            return retriever.search_concurrently(requests, store.settings.timeout_s)

        return await self._run(search)

    async def similar(self, paper_id: str, limit: int, flt: SearchFilter) -> list[Hit]:
        return await self._run(lambda: self.retriever().similar(paper_id, limit, flt))

    async def get(self, paper_id: str) -> Paper:
        return await self._run(lambda: self.retriever().get(paper_id))

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        return await self._run(
            lambda: self.retriever(create=True).upsert(papers, dense))

    async def delete(self, paper_ids: Sequence[str]) -> int:
        return await self._run(lambda: self.retriever().delete(paper_ids))

    async def ready(self) -> int:
        """The gateway's readiness check: the collection open, reachable and ours; its count."""
        return await self._run(lambda: self.opener.open().probe())

    def __del__(self) -> None:
        self.opener.close()

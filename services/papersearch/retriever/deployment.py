"""Retriever: owns the Qdrant store for the app. With the embedded engine one process owns
the shard, so the Serve config pins it to one replica; with a Qdrant server it scales out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ray import serve

from papersearch.corpus.paper import Paper
from papersearch.index.factory import open_store
from papersearch.index.query import Hit, Mode, SearchFilter
from papersearch.models.manifest import model_dir, read_manifest
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings


@serve.deployment(name="Retriever")
class RetrieverDeployment:
    def __init__(self, settings: Settings) -> None:
        manifest = read_manifest(
            model_dir(settings.models.repository, settings.models.embedder_name)
        )
        self.store = open_store(settings)
        self.store.ensure_collection(manifest.dim or 0, manifest.sha256, create=True)
        self.retriever = Retriever(self.store)

    def search(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter
    ) -> list[Hit]:
        return self.retriever.search(text, vector, mode=mode, limit=limit, filter=flt)

    def similar(self, paper_id: str, limit: int, flt: SearchFilter) -> list[Hit]:
        return self.retriever.similar(paper_id, limit, flt)

    def get(self, paper_id: str) -> Paper:
        return self.retriever.get(paper_id)

    def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        return self.retriever.upsert(papers, dense)

    def delete(self, paper_ids: Sequence[str]) -> int:
        return self.retriever.delete(paper_ids)

    def count(self) -> int:
        return self.store.count()

    def __del__(self) -> None:
        self.store.close()

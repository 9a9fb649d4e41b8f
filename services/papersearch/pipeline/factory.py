"""Build the in-process pipeline from settings (the Serve app builds its deployments alike)."""

from __future__ import annotations

import logging

from papersearch.encoder.runtime import Encoder
from papersearch.index.factory import open_store
from papersearch.index.store import Store
from papersearch.models.manifest import ModelNotFound
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.search import SearchPipeline
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings

log = logging.getLogger(__name__)


def open_index(settings: Settings, encoder: Encoder, *, create: bool = False) -> Store:
    """The configured collection, checked against the encoder that will query or fill it."""
    store = open_store(settings)
    store.ensure_collection(encoder.dim, encoder.sha256, create=create)
    return store


def load_reranker(settings: Settings) -> Reranker | None:
    """The reranker if the rerank stage is on and its model exists; without one searches
    return first-stage results (reranked=false), as in serving."""
    if not settings.search.rerank_enabled:
        return None
    try:
        return Reranker.from_settings(settings.models)
    except ModelNotFound as error:
        log.warning("rerank stage on but no reranker model: first-stage results only",
                    extra={"reason": str(error)})
        return None


def build_pipeline(settings: Settings) -> tuple[SearchPipeline, Store]:
    """The in-process pipeline and the store it holds open (close it when done)."""
    encoder = Encoder.from_settings(settings.models)
    store = open_index(settings, encoder)
    backend = LocalBackend(encoder, store, load_reranker(settings))
    return SearchPipeline(backend, settings.search, settings.serve.rerank_timeout_s), store

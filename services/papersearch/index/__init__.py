"""Qdrant storage for papers: an embedded qdrant-edge shard or a Qdrant server, one interface."""

from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    PaperNotFound,
    StorageExhausted,
    StoreError,
    StoreUnavailable,
)
from papersearch.index.factory import open_store
from papersearch.index.query import FusionMethod, Hit, Mode, SearchFilter, SearchRequest
from papersearch.index.sparse import Bm25Encoder, SparseVector
from papersearch.index.store import Store

__all__ = [
    "Bm25Encoder",
    "CollectionMissing",
    "EmbedderMismatch",
    "FusionMethod",
    "Hit",
    "Mode",
    "PaperNotFound",
    "SearchFilter",
    "SearchRequest",
    "SparseVector",
    "Store",
    "StoreError",
    "StorageExhausted",
    "StoreUnavailable",
    "open_store",
]

"""BM25 sparse vectors from Qdrant's own model, the same for every backend.

``qdrant_edge.Bm25`` with its default ``Bm25Config`` (k=1.2, b=0.75, avg_len=256, English
word tokenizer, stopwords and Snowball stemmer) is the model the Qdrant server runs for
``Document(model="qdrant/bm25")``. Documents get BM25 term-frequency weights; a query gets
weight 1.0 per unique term. IDF is not in the vectors: the collection's sparse vector has
Qdrant's IDF modifier, so the engine applies it at search time from live statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import qdrant_edge


class SparseLike(Protocol):
    """Anything with parallel ``indices`` and ``values`` (ours, qdrant-edge's, qdrant-client's)."""

    @property
    def indices(self) -> Sequence[int]: ...

    @property
    def values(self) -> Sequence[float]: ...


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A backend-neutral sparse vector: term hashes and weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.values):
            raise ValueError("sparse vector indices and values differ in length")

    @classmethod
    def of(cls, vector: SparseLike) -> SparseVector:
        if isinstance(vector, SparseVector):
            return vector
        return cls(tuple(int(i) for i in vector.indices), tuple(float(v) for v in vector.values))

    def __len__(self) -> int:
        return len(self.indices)


class Bm25Encoder:
    """Turns paper texts and queries into BM25 sparse vectors."""

    def __init__(self, config: qdrant_edge.Bm25Config | None = None) -> None:
        self._model = qdrant_edge.Bm25(config)

    def document(self, text: str) -> SparseVector:
        return SparseVector.of(self._model.embed_document(text))

    def documents(self, texts: Iterable[str]) -> list[SparseVector]:
        return [self.document(text) for text in texts]

    def query(self, text: str) -> SparseVector:
        return SparseVector.of(self._model.embed_query(text))

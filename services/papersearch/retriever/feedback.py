"""Pseudo-relevance feedback: a hybrid search's own top papers sharpen the query, and the
search runs again with it (README, Results: Query feedback).

- dense (Rocchio): the query vector plus ``dense_weight`` x the mean vector of the top
  ``dense_docs`` papers, renormalised.
- BM25 (RM3-style): each of the top ``sparse_docs`` papers' BM25 term weights as a distribution
  (divided by their sum), averaged over those papers; the ``sparse_terms`` heaviest terms,
  scaled so that the heaviest weighs ``sparse_weight``, are added to the query's own terms.

The first pass is the same hybrid search, filters included, without per-stage scores: one
batch for its lists and one fetch of its top papers' vectors (no payloads), the BM25 ones as
stored (Store.feedback_program), so no paper is tokenised again. A query whose BM25 terms no
paper holds is not expanded (the Retriever decides; where the top papers hold none, one more
sparse query, for one point, asks the index).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from papersearch.index.plan import Record
from papersearch.index.query import SearchRequest
from papersearch.index.sparse import SparseVector
from papersearch.settings import IndexSettings


@dataclass(frozen=True, slots=True)
class Feedback:
    enabled: bool
    dense_docs: int
    dense_weight: float
    sparse_docs: int
    sparse_terms: int
    sparse_weight: float

    @classmethod
    def from_settings(cls, settings: IndexSettings) -> Feedback:
        return cls(settings.prf_enabled, settings.prf_dense_docs, settings.prf_dense_weight,
                   settings.prf_sparse_docs, settings.prf_sparse_terms, settings.prf_sparse_weight)

    @property
    def docs(self) -> int:
        """Papers the first pass must return; 0: feedback off, asked off or a no-op (a side
        with no papers or a weight of 0 adds nothing: the first pass would be paid for
        nothing, and the search said feedback had run)."""
        dense = self.dense_docs if self.dense_weight > 0 else 0
        sparse = self.sparse_docs if self.sparse_weight > 0 else 0
        return max(dense, sparse) if self.enabled else 0

    def expand(self, request: SearchRequest, top: Sequence[Record]) -> SearchRequest:
        """``request`` with its vectors expanded from the first pass's ``top`` papers;
        ``request`` itself when they change neither (nothing matched, or the papers hold
        nothing a side with a weight could add)."""
        dense, query = request.dense_vector(), request.sparse_vector()
        vectors = [r.dense for r in top[: self.dense_docs] if r.dense is not None]
        dense_added = bool(vectors) and self.dense_weight > 0
        if dense_added:
            dense = expand_dense(dense, vectors, self.dense_weight)
        docs = [r.sparse or SparseVector((), ()) for r in top[: self.sparse_docs]]
        # their BM25 vectors as stored (a paper with no BM25 term: empty); the query itself
        # back where they hold no term or the weight is 0
        sparse = expand_sparse(query, docs, self.sparse_terms, self.sparse_weight)
        if not dense_added and sparse is query:
            return request
        return replace(request, dense=dense, sparse=sparse)


def hold_a_term(query: SparseVector, top: Sequence[Record]) -> bool:
    """Whether any of ``top`` holds one of the query's BM25 terms (stored vectors)."""
    terms = set(query.indices)
    return any(r.sparse is not None and not terms.isdisjoint(r.sparse.indices) for r in top)


def expand_dense(query: Sequence[float], docs: Sequence[Sequence[float]], weight: float) -> (
    tuple[float, ...]
):
    expanded = np.asarray(query, dtype=np.float64) + weight * np.mean(
        np.asarray(docs, dtype=np.float64), axis=0)
    norm = np.linalg.norm(expanded)
    return tuple((expanded / norm).tolist()) if norm > 0 else tuple(query)


def expand_sparse(query: SparseVector, docs: Sequence[SparseVector], terms: int,
                  weight: float) -> SparseVector:
    if not docs or weight == 0:
        return query
    indices = np.concatenate([np.asarray(doc.indices, dtype=np.int64) for doc in docs])
    if len(indices) == 0:
        return query
    shares = np.concatenate([np.asarray(doc.values, dtype=np.float64) / (sum(doc.values) or 1.0)
                             / len(docs) for doc in docs])
    found, first, slot = np.unique(indices, return_index=True, return_inverse=True)
    mass = np.bincount(slot, weights=shares, minlength=len(found))  # summed in input order
    heaviest = np.lexsort((first, -mass))[:terms]  # the most mass first; ties: first seen
    weights: defaultdict[int, float] = defaultdict(float)
    for term, value in zip(query.indices, query.values, strict=True):
        weights[term] += value
    top = float(mass[heaviest[0]])
    for term, value in zip(found[heaviest].tolist(), mass[heaviest].tolist(), strict=True):
        weights[term] += weight * value / top
    return SparseVector(tuple(weights), tuple(weights.values()))

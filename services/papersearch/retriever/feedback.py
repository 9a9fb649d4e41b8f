"""Pseudo-relevance feedback: a hybrid search's own top papers sharpen the query, and the
search runs again with it (README, Results: Query feedback).

- dense (Rocchio): the query vector plus ``dense_weight`` x the mean vector of the top
  ``dense_docs`` papers, renormalised.
- BM25 (RM3-style): each of the top ``sparse_docs`` papers' BM25 term weights as a distribution
  (divided by their sum), averaged over those papers; the ``sparse_terms`` heaviest terms,
  scaled so that the heaviest weighs ``sparse_weight``, are added to the query's own terms.

The first pass is the same hybrid search, filters included, without per-stage scores: one
batch for its lists and one fetch of its top papers' payloads and vectors, the BM25 ones as
stored (Store.feedback_program), so no paper is tokenised again.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from operator import itemgetter

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
        """Papers the first pass must return; 0: feedback off."""
        return max(self.dense_docs, self.sparse_docs) if self.enabled else 0

    def expand(self, request: SearchRequest, top: Sequence[Record]) -> SearchRequest:
        """``request`` with its vectors expanded from the first pass's ``top`` papers."""
        vectors = [r.dense for r in top[: self.dense_docs] if r.dense is not None]
        dense = request.dense_vector()
        if vectors:
            dense = expand_dense(dense, vectors, self.dense_weight)
        docs = [r.sparse or SparseVector((), ()) for r in top[: self.sparse_docs]]
        sparse = request.sparse_vector()
        if docs:  # their BM25 vectors as stored (a paper with no BM25 term: empty)
            sparse = expand_sparse(sparse, docs, self.sparse_terms, self.sparse_weight)
        return replace(request, dense=dense, sparse=sparse)


def expand_dense(query: Sequence[float], docs: Sequence[Sequence[float]], weight: float) -> (
    tuple[float, ...]
):
    expanded = np.asarray(query, dtype=np.float64) + weight * np.mean(
        np.asarray(docs, dtype=np.float64), axis=0)
    norm = np.linalg.norm(expanded)
    return tuple((expanded / norm).tolist()) if norm > 0 else tuple(query)


def expand_sparse(query: SparseVector, docs: Sequence[SparseVector], terms: int,
                  weight: float) -> SparseVector:
    mass: defaultdict[int, float] = defaultdict(float)
    for doc in docs:
        total = sum(doc.values) or 1.0
        for term, value in zip(doc.indices, doc.values, strict=True):
            mass[term] += value / total / len(docs)
    heaviest = heapq.nlargest(terms, mass.items(), key=itemgetter(1))  # ties: first seen
    if not heaviest or weight == 0:
        return query
    top = heaviest[0][1]
    weights: defaultdict[int, float] = defaultdict(float)
    for term, value in zip(query.indices, query.values, strict=True):
        weights[term] += value
    for term, value in heaviest:
        weights[term] += weight * value / top
    return SparseVector(tuple(weights), tuple(weights.values()))

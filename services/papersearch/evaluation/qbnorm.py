"""Hubness of a retriever, and querybank normalisation (QB-Norm) of dense scores.

Hubness: in a high-dimensional embedding space a few documents ("hubs") are the nearest
neighbours of many unrelated queries while many others ("anti-hubs") are nobody's. Measured by
the k-occurrence N_k: in how many queries' top k each document appears (``hubness``), against
what the same queries would give if each drew its top k uniformly at random (``uniform_hubness``).

QB-Norm (Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022) with
the dynamic inverted softmax (DIS): a querybank of queries B; the activation set holds the
documents that are some bank query's top 1. For a new query whose own top document is in the
activation set (a hub), each candidate d is rescored by the inverted softmax

    exp(beta s(q, d)) / sum_b exp(beta s(b, d))

i.e. a document that many bank queries find similar is discounted; any other query keeps its
scores. Here the rescoring is applied to the dense candidate list only (``prefetch_limit``
deep), and the scores returned are on the cosine scale, ``s(q, d) - (lse_b(beta s(b, d)) -
log |B|) / beta``: the same order as the inverted softmax, fusable like a cosine. A bank query
made from a document's own text (``sources``) does not count in that document's sum.

Measured by benchmarks/qbnorm.py (README, Results: Hubness and querybank normalisation) and not
adopted: no querybank and temperature was no worse on both tuning sets, and the held-out sets did
not agree. It is therefore no search option; this module serves the measurement and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Ranked = Sequence[tuple[str, float]]  # (id, score), best first


@dataclass(frozen=True, slots=True)
class Hubness:
    """The k-occurrence distribution of one run over a collection."""

    queries: int
    documents: int
    k: int
    skewness: float  # of N_k over all documents (anti-hubs included)
    top1pct_share: float  # share of the queries' top-k slots taken by the top 1% of documents
    max: int  # the largest N_k
    anti_hubs: int  # documents in no query's top k

    def to_dict(self) -> dict[str, float | int]:
        return {"queries": self.queries, "documents": self.documents, "k": self.k,
                "skewness": round(self.skewness, 3), "top1pct_share": round(self.top1pct_share, 4),
                "max": self.max, "anti_hubs": self.anti_hubs,
                "anti_hub_share": round(self.anti_hubs / self.documents, 4)}


def k_occurrence(run: Mapping[str, Sequence[str]], documents: Sequence[str], k: int = 10) -> (
    np.ndarray
):
    """N_k per document of ``documents`` (in that order): how many queries of ``run`` have it
    in their first ``k`` distinct ids. Ids outside ``documents`` are ignored."""
    position = {d: n for n, d in enumerate(documents)}
    counts = np.zeros(len(documents), dtype=np.int64)
    for ranked in run.values():
        for doc in list(dict.fromkeys(ranked))[:k]:
            if doc in position:
                counts[position[doc]] += 1
    return counts


def hubness_of(counts: np.ndarray, queries: int, k: int) -> Hubness:
    if len(counts) == 0:
        raise ValueError("no documents")
    values = counts.astype(np.float64)
    std = values.std()
    skew = float(((values - values.mean()) ** 3).mean() / std ** 3) if std > 0 else 0.0
    top = max(1, math.ceil(0.01 * len(values)))
    slots = values.sum()
    share = float(np.sort(values)[::-1][:top].sum() / slots) if slots else 0.0
    return Hubness(queries, len(values), k, skew, share, int(values.max()),
                   int((counts == 0).sum()))


def hubness(run: Mapping[str, Sequence[str]], documents: Sequence[str], k: int = 10) -> Hubness:
    """The k-occurrence statistics of ``run`` over the collection ``documents``."""
    return hubness_of(k_occurrence(run, documents, k), len(run), k)


def uniform_hubness(queries: int, documents: int, k: int = 10, seed: int = 17) -> Hubness:
    """The same statistics when each query's top k are ``k`` documents drawn uniformly at
    random (without replacement): what no hubness looks like for this many queries."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(documents, dtype=np.int64)
    for _ in range(queries):
        counts[rng.choice(documents, size=min(k, documents), replace=False)] += 1
    return hubness_of(counts, queries, k)


@dataclass(frozen=True, slots=True)
class QueryBank:
    """Querybank vectors (unit length, one row per bank query), the document each was made
    from (None: a real query), and the inverted-softmax temperature ``beta``."""

    vectors: np.ndarray
    sources: tuple[str | None, ...]
    beta: float

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.sources):
            raise ValueError("one source per bank vector")
        if len(self.vectors) == 0:
            raise ValueError("an empty querybank")
        if self.beta <= 0:
            raise ValueError("beta must be positive")

    def similarities(self, doc_vectors: np.ndarray) -> np.ndarray:
        """Bank x documents cosine similarities (vectors of unit length)."""
        return np.asarray(self.vectors, dtype=np.float64) @ np.asarray(
            doc_vectors, dtype=np.float64).T

    def activation_set(self, doc_ids: Sequence[str], doc_vectors: np.ndarray) -> frozenset[str]:
        """The documents that are some bank query's top 1 among ``doc_ids`` (a bank query's own
        source document excluded: it would trivially be its top 1; a bank query with no other
        candidate has none)."""
        sims = self._masked(self.similarities(doc_vectors), doc_ids)
        return frozenset(doc_ids[int(n)] for n, row in zip(sims.argmax(axis=1), sims,
                                                           strict=True) if row.max() > -np.inf)

    def penalties(self, doc_ids: Sequence[str], doc_vectors: np.ndarray) -> np.ndarray:
        """Per document: ``(lse_b(beta s(b, d)) - log |B|) / beta``, the amount the inverted
        softmax takes off its cosine (a soft maximum of the bank's similarities to it)."""
        sims = self._masked(self.similarities(doc_vectors), doc_ids) * self.beta
        counted = (sims > -np.inf).sum(axis=0)
        top = np.where(counted > 0, sims.max(axis=0), 0.0)
        with np.errstate(divide="ignore"):
            lse = top + np.log(np.exp(sims - top).sum(axis=0))
        penalty = (lse - np.log(np.maximum(counted, 1))) / self.beta
        return np.where(counted > 0, penalty, 0.0)

    def _masked(self, sims: np.ndarray, doc_ids: Sequence[str]) -> np.ndarray:
        if not any(s is not None for s in self.sources):
            return sims
        column = {d: n for n, d in enumerate(doc_ids)}
        for row, source in enumerate(self.sources):
            if source is not None and source in column:
                sims[row, column[source]] = -np.inf
        return sims


def dis_rescore(ranked: Ranked, penalties: Mapping[str, float], activation: frozenset[str]) -> (
    list[tuple[str, float]]
):
    """The dynamic inverted softmax over one query's dense candidates (cosine, best first):
    if its top document is in the activation set, every candidate's cosine less its penalty,
    re-sorted; otherwise ``ranked`` unchanged. A candidate without a penalty keeps its score."""
    if not ranked or ranked[0][0] not in activation:
        return list(ranked)
    rescored = [(d, s - penalties.get(d, 0.0)) for d, s in ranked]
    return sorted(rescored, key=lambda item: -item[1])

"""Fusing ranked lists in this process: the ``convex`` hybrid fusion, and the candidates
``papersearch tune`` compares (evaluation/fusion_tuning.py).

RRF and DBSF also run inside Qdrant (``index.fusion`` rrf, dbsf); a convex combination does not,
so the Store fetches both lists and fuses them here (index/store.py). A convex combination
weighs each list's normalised scores: ``w * dense + (1 - w) * sparse``. A paper missing from a
list that filled its window (``depth``) gets that list's lowest normalised score, an upper bound
of its own; missing from a shorter list, which holds every match, it gets 0 (BM25: no query
term in the paper).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
Ranked = Sequence[tuple[str, float]]  # (id, score), best first
Normalisation = Literal["max", "minmax", "dbsf"]


def normalise(scores: np.ndarray, how: Normalisation) -> np.ndarray:
    """``max``: below 0 taken as 0 (a negative cosine is no evidence), then divided by the top
    score when it is positive (negative cosines divided by a top near 0 had swamped the other
    list, and the ranking flipped as the top crossed 0); ``minmax``: onto
    [0, 1]; ``dbsf``: distribution-based scaling, mean +- 3 std onto [0, 1], as Qdrant's but
    with the population std and 1 for a constant list (Qdrant: the sample std and 0.5; only
    `papersearch tune` compares it, the Store runs Qdrant's own)."""
    if len(scores) == 0:
        return scores
    if how == "max":
        kept = np.maximum(scores, 0.0)
        top = kept.max()
        return kept / top if top > 0 else kept
    low, high = (
        (scores.min(), scores.max()) if how == "minmax"
        else (scores.mean() - 3 * scores.std(), scores.mean() + 3 * scores.std())
    )
    return (scores - low) / (high - low) if high > low else np.ones_like(scores)


def normalised(ranked: Sequence[tuple[K, float]], depth: int, how: Normalisation = "max") -> (
    tuple[np.ndarray, float]
):
    """One list's normalised scores (in its order), and what an id missing from it gets in a
    convex combination: the list's lowest when it filled its window (``depth``), else 0."""
    scores = normalise(np.array([s for _, s in ranked], dtype=np.float64), how)
    return scores, float(scores.min()) if len(scores) >= depth else 0.0


def convex(lists: Sequence[Sequence[tuple[K, float]]], weights: Sequence[float], depth: int,
           how: Normalisation = "max", top: int | None = None,
           ties_by_id: bool = False) -> list[tuple[K, float]]:
    """Every id of ``lists`` (each at most ``depth`` long; any hashable ids), by the weighted
    sum of its normalised scores, best first; with ``top``, only the first ``top`` of them.
    Ties go by id with ``ties_by_id`` (ids then comparable), else in the order ids were first
    met in: for an engine's lists its storage order, which depends on how the index happened
    to be written (in batches of which size, in which order), so two indexes of one corpus
    answered a query differently."""
    ids = list(dict.fromkeys(i for ranked in lists for i, _ in ranked))
    position = {i: n for n, i in enumerate(ids)}
    fused = np.zeros(len(ids))
    for ranked, weight in zip(lists, weights, strict=True):
        scores, fill = normalised(ranked, depth, how)
        column = np.full(len(ids), fill)
        column[[position[i] for i, _ in ranked]] = scores
        fused += weight * column
    order = np.argsort(-fused, kind="stable")
    if ties_by_id:
        order = _ties_by_id(order, fused, ids, top)
    return [(ids[n], float(fused[n])) for n in order[:top]]


def _ties_by_id(order: np.ndarray, fused: np.ndarray, ids: Sequence[Any], top: int | None
                ) -> np.ndarray:
    """``order`` with each run of equal scores that reaches into the first ``top`` sorted by
    id (the run across the cut whole, so which ids make the cut is settled too)."""
    scores = fused[order]
    end = len(order) if top is None else min(top, len(order))
    while 0 < end < len(order) and scores[end] == scores[end - 1]:
        end += 1
    if not np.any(scores[1:end] == scores[: max(end - 1, 0)]):
        return order  # no tie: the usual case, at C speed
    settled = order.copy()
    start = 0
    while start < end:
        stop = start + 1
        while stop < end and scores[stop] == scores[start]:
            stop += 1
        if stop - start > 1:
            settled[start:stop] = sorted(order[start:stop], key=lambda n: ids[n])
        start = stop
    return settled


def rrf(lists: Sequence[Ranked], weights: Sequence[float], k: float) -> list[tuple[str, float]]:
    """Weighted reciprocal rank fusion, ranks from 1: ``sum w / (k + rank)``; equal weights
    of 1 are the RRF paper's (Qdrant's ``rrf_k`` counts ranks from 0: its k is this k + 1)."""
    fused: dict[str, float] = {}
    for ranked, weight in zip(lists, weights, strict=True):
        for rank, (i, _) in enumerate(ranked, start=1):
            fused[i] = fused.get(i, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])

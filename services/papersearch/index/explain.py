"""Explained rankings (``explain``): one hit's stage ranks, fusion inputs and matched BM25 terms.

``Store.explain_program`` fetches what this needs in one batch after the search (each stage's
list as the search saw it, and every BM25 query term's score for every hit), so a search
without ``explain`` costs nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from papersearch.index.fusion import normalise
from papersearch.index.plan import Scored
from papersearch.index.query import Explanation, Hit, SearchRequest, StageRank
from papersearch.index.schema import DENSE, SPARSE
from papersearch.settings import IndexSettings


def explain_hit(hit: Hit, rank: int, request: SearchRequest, settings: IndexSettings,
                lists: Mapping[str, list[Scored]],
                terms: Sequence[tuple[str, Mapping[str, float]]], depth: int) -> Explanation:
    """``hit``, ranked ``rank`` (from 1) in ``request``'s answer: ``lists`` are the stages'
    lists by vector name, ``terms`` each BM25 query term's label and scores by point id."""
    pid = hit.paper.point_id
    positions = {using: next((n for n, s in enumerate(ranked, start=1) if s.point_id == pid),
                             None) for using, ranked in lists.items()}
    dense = StageRank(positions[DENSE], hit.dense_score) if DENSE in lists else None
    sparse = StageRank(positions[SPARSE], hit.sparse_score) if SPARSE in lists else None
    matched = tuple(sorted(((label, round(score, 6)) for label, scores in terms
                            if (score := scores.get(pid, 0.0)) > 0),
                           key=lambda term: -term[1]))
    if request.mode != "hybrid":
        return Explanation(dense, sparse, terms=matched)
    method = request.fusion or settings.fusion
    inputs: dict[str, float] = {}
    if method == "convex":
        weight = (settings.fusion_dense_weight if request.dense_weight is None
                  else request.dense_weight)
        inputs["dense_weight"] = weight
        for name, using in (("dense", DENSE), ("bm25", SPARSE)):
            inputs.update(_normalised(name, lists[using], pid, depth))
        formula = (f"convex: {weight:g} x dense / dense_max + {1 - weight:g} x bm25 / bm25_max"
                   f" = {weight:g} x {inputs['dense_normalised']:.4f} + {1 - weight:g} x "
                   f"{inputs['bm25_normalised']:.4f}")
    elif method == "rrf":
        k = request.rrf_k or settings.rrf_k
        inputs["rrf_k"] = k
        formula = f"rrf: the sum over the dense and BM25 lists of 1 / ({k} + rank - 1)"
    else:
        formula = "dbsf: each list's scores scaled from mean - 3 std .. mean + 3 std, summed"
    for name, using in (("dense", DENSE), ("bm25", SPARSE)):
        if positions[using] is not None:
            inputs[f"{name}_rank"] = positions[using] or 0
    return Explanation(dense, sparse, StageRank(rank, hit.score), formula, inputs, matched)


def _normalised(name: str, ranked: list[Scored], pid: str, depth: int) -> dict[str, float]:
    """The convex fusion's inputs from one list (index/fusion.py, ``max`` normalisation): its
    top score and this hit's normalised score; a hit missing from a full list gets the list's
    lowest, from a shorter one 0."""
    scores = np.array([s.score for s in ranked], dtype=np.float64)
    normalised = normalise(scores, "max")
    position = next((n for n, s in enumerate(ranked) if s.point_id == pid), None)
    if position is not None:
        value = float(normalised[position])
    else:
        value = float(normalised.min()) if len(ranked) >= depth else 0.0
    return {f"{name}_max": float(scores.max()) if len(scores) else 0.0,
            f"{name}_normalised": value}

"""Explained rankings (``explain``): one hit's stage ranks, fusion inputs and matched BM25 terms.

``Store.explain_program`` fetches what this needs after the search, in one or two batches
(each stage's list as the search saw it, and each BM25 query term's score for every hit, up to
MAX_EXPLAINED_TERMS terms), so a search without ``explain`` costs nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from papersearch.index.fusion import normalised
from papersearch.index.plan import Scored
from papersearch.index.query import Explanation, Hit, SearchRequest, StageRank
from papersearch.index.schema import DENSE, SPARSE
from papersearch.settings import IndexSettings

OTHER_TERMS = "({} other terms)"  # the label of a hit's BM25 part from terms not itemised


@dataclass(frozen=True, slots=True)
class StageList:
    """One stage's list as the fusion saw it, read once for every hit: each paper's rank
    (from 1) and normalised score, the list's top score, and what a paper missing from it gets
    (index/fusion.py, ``normalised``)."""

    ranks: dict[str, int]
    normalised: dict[str, float]
    top: float
    fill: float

    @classmethod
    def of(cls, ranked: Sequence[Scored], depth: int) -> StageList:
        pairs = [(s.point_id, s.score) for s in ranked]
        scores, fill = normalised(pairs, depth)
        ids = [pid for pid, _ in pairs]
        return cls({pid: n for n, pid in enumerate(ids, start=1)},
                   dict(zip(ids, scores.tolist(), strict=True)),
                   max((score for _, score in pairs), default=0.0), fill)


def explain_hit(hit: Hit, rank: int, request: SearchRequest, settings: IndexSettings,
                lists: Mapping[str, StageList],
                terms: Sequence[tuple[str, Mapping[str, float]]], others: int = 0
                ) -> Explanation:
    """``hit``, ranked ``rank`` (from 1) in ``request``'s answer: ``lists`` are the stages'
    lists by vector name, ``terms`` each BM25 query term's label and scores by point id;
    ``others`` the query terms the hit holds that were not itemised (Store's
    MAX_EXPLAINED_TERMS), whose part of its BM25 score comes last, as OTHER_TERMS."""
    pid = hit.paper.point_id
    positions = {using: stage.ranks.get(pid) for using, stage in lists.items()}
    if request.mode != "hybrid":  # the answer is its one stage's ranking, ties settled deeper
        positions[DENSE if request.mode == "dense" else SPARSE] = rank
    dense = StageRank(positions[DENSE], hit.dense_score) if DENSE in lists else None
    sparse = StageRank(positions[SPARSE], hit.sparse_score) if SPARSE in lists else None
    matched = tuple(sorted(((label, round(score, 6)) for label, scores in terms
                            if (score := scores.get(pid, 0.0)) > 0),
                           key=lambda term: -term[1]))
    if others and hit.sparse_score is not None:
        rest = hit.sparse_score - sum(score for _, score in matched)
        matched += ((OTHER_TERMS.format(others), round(max(rest, 0.0), 6)),)
    if request.mode != "hybrid":
        return Explanation(dense, sparse, terms=matched)
    method = request.fusion or settings.fusion
    inputs: dict[str, float] = {}
    if method == "convex":
        weight = (settings.fusion_dense_weight if request.dense_weight is None
                  else request.dense_weight)
        inputs["dense_weight"] = weight
        for name, using in (("dense", DENSE), ("bm25", SPARSE)):
            stage = lists[using]
            inputs[f"{name}_max"] = stage.top
            inputs[f"{name}_normalised"] = stage.normalised.get(pid, stage.fill)
        formula = (f"convex: {weight:g} x max(dense, 0) / dense_max + {1 - weight:g} x "
                   "bm25 / bm25_max"
                   f" = {weight:g} x {inputs['dense_normalised']:.4f} + {1 - weight:g} x "
                   f"{inputs['bm25_normalised']:.4f}")
    elif method == "rrf":
        k = request.rrf_k or settings.rrf_k
        inputs["rrf_k"] = k
        formula = f"rrf: the sum over the dense and BM25 lists of 1 / ({k} + rank - 1)"
    else:
        formula = "dbsf: each list's scores scaled from mean - 3 std .. mean + 3 std, summed"
    for name, using in (("dense", DENSE), ("bm25", SPARSE)):
        position = positions[using]
        if position is not None:
            inputs[f"{name}_rank"] = position
    return Explanation(dense, sparse, StageRank(rank, hit.score), formula, inputs, matched)

"""Rerank fusion, first-stage list fusion and query validation (fast, no models)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from papersearch.corpus.paper import Paper
from papersearch.index.fusion import convex, normalise, rrf
from papersearch.index.query import Hit
from papersearch.pipeline.query import InvalidQuery, SearchQuery
from papersearch.pipeline.search import rerank_hits
from papersearch.reranker.fusion import fuse
from papersearch.settings import SearchSettings


def test_weight_one_is_reranker_order_and_zero_first_stage_order() -> None:
    scores = [0.1, 3.0, 2.0, -1.0]
    assert [i for i, _ in fuse(scores, 1.0, 60)] == [1, 2, 0, 3]
    assert [i for i, _ in fuse(scores, 0.0, 60)] == [0, 1, 2, 3]


def test_fused_scores_by_hand() -> None:
    # ranks (first, rerank): item0 (1, 2), item1 (2, 1); w = 0.25, k = 1
    # item0: 0.25/(1+2) + 0.75/(1+1) = 0.0833 + 0.375 = 0.4583
    # item1: 0.25/(1+1) + 0.75/(1+2) = 0.125 + 0.25 = 0.375
    fused = fuse([0.0, 1.0], 0.25, 1)
    assert [i for i, _ in fused] == [0, 1]
    assert fused[0][1] == pytest.approx(0.25 / 3 + 0.75 / 2)
    assert fused[1][1] == pytest.approx(0.25 / 2 + 0.75 / 3)


def test_bad_weight() -> None:
    with pytest.raises(ValueError, match="weight"):
        fuse([1.0], 1.5, 60)


def _hit(i: int) -> Hit:
    return Hit(Paper(id=f"p{i}", title=f"t{i}", abstract="a"), score=1.0 / (i + 1))


def test_rerank_hits_window_then_tail_cut_at_top_k() -> None:
    candidates = [_hit(i) for i in range(6)]
    settings = SearchSettings(rerank_weight=1.0)
    hits = rerank_hits(candidates, [0.0, 0.0, 5.0], "hybrid", 5, settings)
    assert [h.paper.id for h in hits] == ["p2", "p0", "p1", "p3", "p4"]
    assert hits[0].stages.rerank == 5.0 and hits[0].stages.fused == pytest.approx(1 / 3)
    assert hits[3].stages.rerank is None  # tail below the window was not reranked
    # scored on as the fusion would (its first-stage rank for both): the order holds
    assert hits[3].stages.fused == 1 / 4 and hits[3].score == pytest.approx(1 / (5 + 4))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    defaults = rerank_hits(candidates, [0.3, 0.2, 0.1], "hybrid", 6, SearchSettings())
    assert [h.score for h in defaults] == sorted((h.score for h in defaults), reverse=True)
    assert defaults[-1].score < defaults[2].score and defaults[-1].stages.fused == 1 / 6


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (SearchQuery(text=""), "empty"),
        (SearchQuery(text=" \t\n"), "empty"),
        (SearchQuery(text="x" * 2049), "2049 characters"),
        (SearchQuery(text="ok", top_k=0), "top_k"),
        (SearchQuery(text="ok", top_k=101), "top_k"),
        (SearchQuery(text="ok", mode="fuzzy"), "unknown mode"),  # type: ignore[arg-type]
    ],
)
def test_invalid_queries(query: SearchQuery, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        query.validate(SearchSettings())


def test_valid_query_passes() -> None:
    query = SearchQuery(text="x" * 2048, top_k=100, mode="sparse")
    assert query.validate(SearchSettings()) is query


def test_normalisations_by_hand() -> None:
    scores = np.array([4.0, 2.0, 1.0])
    assert normalise(scores, "max").tolist() == [1.0, 0.5, 0.25]
    assert normalise(scores, "minmax").tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    low, high = scores.mean() - 3 * scores.std(), scores.mean() + 3 * scores.std()
    assert normalise(scores, "dbsf").tolist() == pytest.approx(list((scores - low) / (high - low)))
    # a negative cosine is no evidence: 0, whatever the top (divided by a top near 0 it had
    # swamped the other list, and the ranking flipped as the top crossed 0)
    assert normalise(np.array([-0.2, -0.5]), "max").tolist() == [0.0, 0.0]
    assert normalise(np.array([0.0005, -0.05]), "max").tolist() == [1.0, 0.0]
    fused = convex([[("a", 0.0005), ("b", -0.05)], [("b", 9.0), ("a", 1.0)]], [0.6, 0.4], 2)
    assert fused == [("a", pytest.approx(0.6 + 0.4 / 9)), ("b", pytest.approx(0.4))]  # b: -59.6
    assert normalise(np.array([3.0, 3.0]), "minmax").tolist() == [1.0, 1.0]


def test_convex_fills_a_missing_paper_with_a_full_windows_lowest_score() -> None:
    dense = [("a", 0.8), ("b", 0.4)]
    sparse = [("c", 10.0), ("a", 5.0), ("d", 2.5)]
    fused = dict(convex([dense, sparse], [0.6, 0.4], depth=2))
    # dense /0.8: a 1, b 0.5 (window full: floor 0.5); sparse /10: c 1, a 0.5, d 0.25
    assert fused == pytest.approx({"a": 0.6 + 0.2, "b": 0.3 + 0.1, "c": 0.3 + 0.4,
                                   "d": 0.3 + 0.1})
    assert [i for i, _ in convex([dense, sparse], [1.0, 0.0], depth=2)][:2] == ["a", "b"]


def test_convex_counts_a_paper_missing_from_a_short_list_as_zero() -> None:
    """A list shorter than the window holds every match: the others scored nothing there."""
    dense = [("a", 0.8), ("b", 0.4)]
    sparse = [("b", 7.0)]
    fused = dict(convex([dense, sparse], [0.6, 0.4], depth=5))
    assert fused == pytest.approx({"a": 0.6, "b": 0.3 + 0.4})


def test_convex_top_is_the_head_of_the_whole_order_with_any_hashable_ids() -> None:
    """``top`` cuts the fused order (ties kept in first-met order); ids need only hash: the
    Store fuses qdrant-edge's UUID objects and formats only the top ones."""
    keys = [uuid.UUID(int=n) for n in range(6)]
    dense = [(keys[0], 0.9), (keys[1], 0.5), (keys[2], 0.5), (keys[3], 0.1)]
    sparse = [(keys[4], 3.0), (keys[2], 3.0), (keys[5], 1.0), (keys[0], 1.0)]
    whole = convex([dense, sparse], [0.5, 0.5], depth=4)
    assert [k for k, _ in whole] == [keys[2], keys[0], keys[4], keys[1], keys[3], keys[5]]
    for top in range(len(whole) + 2):
        assert convex([dense, sparse], [0.5, 0.5], depth=4, top=top) == whole[:top]


def test_convex_ties_go_by_id_whatever_order_the_lists_came_in() -> None:
    """The Store's convex fusion orders equal fused scores by key (as the point ids order):
    in the order first met, papers only BM25 found, tied there, came in the engine's storage
    order, so two indexes of one corpus answered differently."""
    dense = [("d1", 0.9), ("d2", 0.8)]
    tied = [("t3", 2.0), ("t1", 2.0), ("t2", 2.0), ("t0", 1.0)]
    for sparse in (tied, [tied[2], tied[0], tied[1], tied[3]]):
        fused = convex([dense, sparse], [0.6, 0.4], depth=2, top=4, ties_by_id=True)
        assert [i for i, _ in fused] == ["t1", "t2", "t3", "d1"]


def test_weighted_rrf_by_hand() -> None:
    fused = dict(rrf([[("a", 9.0), ("b", 1.0)], [("b", 3.0)]], [0.5, 1.5], k=10))
    assert fused == pytest.approx({"a": 0.5 / 11, "b": 0.5 / 12 + 1.5 / 11})


def test_a_hit_below_the_rerank_window_is_explained_as_not_ranked_by_it() -> None:
    """Its explanation had no rerank stage at all, which the API reads as "the stage did not
    run": rank 0 (not among the reranked) is what it is."""
    from papersearch.index.query import Explanation, StageRank

    candidates = [Hit(h.paper, h.score, explanation=Explanation(fused=StageRank(i + 1, h.score)))
                  for i, h in enumerate(_hit(i) for i in range(4))]
    hits = rerank_hits(candidates, [0.0, 1.0], "hybrid", 4, SearchSettings())
    ranks = [h.explanation.rerank for h in hits if h.explanation is not None]
    assert sorted(ranks[:2], key=lambda r: r.rank or 0) == [StageRank(1, 1.0), StageRank(2, 0.0)]
    assert ranks[2:] == [StageRank(None, None), StageRank(None, None)]

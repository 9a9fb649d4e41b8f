"""The min_relevance cut-off: validation, the cut itself, and where the pipeline applies it
(fast: a scripted backend, no models)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from papersearch.api import convert
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.corpus.paper import Paper
from papersearch.index.query import Hit, Mode, SearchFilter
from papersearch.pipeline.query import (
    InvalidQuery,
    SearchHit,
    SearchQuery,
    SearchResult,
    StageScores,
    cut_below,
)
from papersearch.pipeline.search import SearchPipeline
from papersearch.retriever.retriever import Retrieved
from papersearch.settings import SearchSettings

LIMITS = SearchSettings()
# First-stage order p0..p4 with these dense cosines (p3 has none, as a sparse-only hit would).
DENSE: list[float | None] = [0.9, 0.2, 0.5, None, 0.45]


class Scripted:
    """A backend whose retrieval returns the hits above and whose reranker ranks the window
    by ``rerank_scores``."""

    has_reranker = True

    def __init__(self, rerank_scores: Sequence[float] = ()) -> None:
        self.rerank_scores = np.asarray(rerank_scores, dtype=np.float32)

    def pinned(self) -> Scripted:
        return self

    async def encode_query(self, text: str) -> np.ndarray:
        return np.ones(4, dtype=np.float32) / 2.0

    async def retrieve(self, text: str, vector: np.ndarray | None, mode: Mode, limit: int,
                       flt: SearchFilter, explain: bool = False,
                       feedback: bool | None = None) -> Retrieved:
        hits = [Hit(Paper(id=f"p{i}", title=f"t{i}", abstract="a"), 1.0 / (i + 1), dense)
                for i, dense in enumerate(DENSE)]
        return Retrieved(hits[:limit], False, mode)

    async def rerank(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.rerank_scores[: len(passages)]


def search(query: SearchQuery, backend: Scripted | None = None, top_n: int = 3) -> SearchResult:
    settings = SearchSettings(rerank_enabled=True, rerank_top_n=top_n, rerank_weight=1.0)
    pipeline = SearchPipeline(backend or Scripted(), settings)  # type: ignore[arg-type]
    return asyncio.run(pipeline.search(query))


def ids(result: SearchResult) -> list[str]:
    return [h.paper.id for h in result.hits]


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1.0, 0.0, 0.35, 1.0])
@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_a_cosine_in_range_is_accepted(value: float, mode: Mode) -> None:
    query = SearchQuery("q", mode=mode, min_relevance=value)
    assert query.validate(LIMITS) is query


@pytest.mark.parametrize("value", [1.0001, -1.5, math.nan, math.inf])
def test_out_of_range_or_nan_is_invalid(value: float) -> None:
    with pytest.raises(InvalidQuery, match="min_relevance must be between -1 and 1"):
        SearchQuery("q", min_relevance=value).validate(LIMITS)


def test_sparse_mode_has_no_cosine_to_cut_on() -> None:
    with pytest.raises(InvalidQuery, match="min_relevance needs mode dense or hybrid"):
        SearchQuery("q", mode="sparse", min_relevance=0.3).validate(LIMITS)
    assert SearchQuery("q", mode="sparse").validate(LIMITS)  # without one, sparse is fine


# --- the cut -------------------------------------------------------------------------------


def _search_hit(name: str, dense: float | None) -> SearchHit:
    return SearchHit(Paper(id=name, title=name, abstract="a"), 1.0, StageScores(dense=dense))


def test_cut_keeps_order_and_the_threshold_itself_and_drops_hits_without_a_cosine() -> None:
    hits = (_search_hit("a", 0.3), _search_hit("b", 0.7), _search_hit("c", None),
            _search_hit("d", 0.2999), _search_hit("e", 0.5))
    kept, dropped = cut_below(hits, 0.3)
    assert [h.paper.id for h in kept] == ["a", "b", "e"] and dropped == 2
    assert cut_below(hits, None) == (hits, 0)
    assert cut_below(hits, 0.8) == ((), 5)


# --- in the pipeline -----------------------------------------------------------------------


def test_unset_keeps_every_hit() -> None:
    result = search(SearchQuery("q", top_k=5, rerank=False))
    assert ids(result) == ["p0", "p1", "p2", "p3", "p4"] and result.below_min_relevance == 0


def test_cut_counts_only_the_requested_top_k() -> None:
    result = search(SearchQuery("q", top_k=3, rerank=False, min_relevance=0.4))
    # top 3 are p0 (0.9), p1 (0.2), p2 (0.5): p1 goes; p3 and p4 were never in the top_k
    assert ids(result) == ["p0", "p2"] and result.below_min_relevance == 1
    assert all(h.stages.dense is not None and h.stages.dense >= 0.4 for h in result.hits)


def test_cut_applies_after_the_rerank_and_keeps_its_order() -> None:
    # the reranker puts p2 first, then p1, then p0; the tail p3, p4 follows in first-stage order
    result = search(SearchQuery("q", top_k=5, mode="dense", min_relevance=0.4),
                    Scripted([0.0, 1.0, 2.0]))
    assert result.reranked
    assert ids(result) == ["p2", "p0", "p4"] and result.below_min_relevance == 2


def test_a_high_cut_can_answer_empty() -> None:
    result = search(SearchQuery("q", top_k=5, rerank=False, min_relevance=0.95))
    assert result.hits == () and result.below_min_relevance == 5


# --- over the API ---------------------------------------------------------------------------


def test_request_field_maps_both_ways() -> None:
    unset = convert.search_query_from_proto(pb.SearchRequest(query="q"), LIMITS)
    assert unset.min_relevance is None
    assert not convert.search_query_to_proto(unset).HasField("min_relevance")
    query = SearchQuery("q", mode="dense", min_relevance=0.35)
    request = convert.search_query_to_proto(query)
    assert request.min_relevance == 0.35  # a double: the client's value arrives exactly
    assert convert.search_query_from_proto(request, LIMITS) == query


@pytest.mark.parametrize(("request_kwargs", "message"), [
    ({"min_relevance": 2.0}, "min_relevance must be between -1 and 1 (a cosine), got 2.0"),
    ({"min_relevance": math.nan}, "got nan"),
    ({"min_relevance": 0.2, "mode": pb.MODE_SPARSE}, "needs mode dense or hybrid"),
])
def test_bad_request_field_is_invalid(request_kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidQuery, match=re.escape(message)):
        convert.search_query_from_proto(pb.SearchRequest(query="q", **request_kwargs), LIMITS)


def test_dropped_count_maps_both_ways() -> None:
    result = SearchResult((_search_hit("a", 0.6),), False, {"total": 1.0}, below_min_relevance=4)
    response = convert.search_response_to_proto(result)
    assert response.below_min_relevance == 4
    assert convert.search_result_from_proto(response).below_min_relevance == 4

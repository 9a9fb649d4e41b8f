"""The in-process search pipeline. The Serve ingress runs the same steps through handles."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from papersearch.encoder.runtime import Encoder
from papersearch.index.query import Hit, Mode
from papersearch.pipeline.query import SearchHit, SearchQuery, SearchResult, StageScores
from papersearch.reranker.fusion import fuse
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retriever
from papersearch.settings import SearchSettings

log = logging.getLogger(__name__)


class SearchPipeline:
    """encode the query -> retrieve candidates -> rerank the top window (optional)."""

    def __init__(
        self,
        encoder: Encoder,
        retriever: Retriever,
        reranker: Reranker | None,
        settings: SearchSettings,
    ) -> None:
        self.encoder = encoder
        self.retriever = retriever
        self.reranker = reranker
        self.settings = settings

    def search(self, query: SearchQuery) -> SearchResult:
        query.validate(self.settings)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        vector = None
        if query.mode != "sparse":
            vector = self.encoder.encode_queries([query.text])[0]
        timings["encode"] = _ms_since(started)
        reranker = self.reranker if query.rerank and self.settings.rerank_enabled else None
        depth = max(query.top_k, self.settings.rerank_top_n) if reranker else query.top_k
        mark = time.perf_counter()
        candidates = self.retriever.search(
            query.text, vector, mode=query.mode, limit=depth, filter=query.filter
        )
        timings["retrieve"] = _ms_since(mark)
        if reranker is None or not candidates:
            hits = [_first_stage_hit(h, query.mode) for h in candidates[: query.top_k]]
            timings["total"] = _ms_since(started)
            return SearchResult(tuple(hits), False, timings)
        mark = time.perf_counter()
        window = candidates[: self.settings.rerank_top_n]
        scores = reranker.score(query.text, [h.paper.text for h in window])
        timings["rerank"] = _ms_since(mark)
        hits = rerank_hits(candidates, scores, query.mode, query.top_k, self.settings)
        timings["total"] = _ms_since(started)
        return SearchResult(tuple(hits), True, timings)


def rerank_hits(
    candidates: Sequence[Hit],
    scores: Sequence[float],
    mode: Mode,
    top_k: int,
    settings: SearchSettings,
) -> list[SearchHit]:
    """Final ranking: the fused window first, then the first-stage tail, cut at top_k."""
    window = len(scores)
    ordered = [
        SearchHit(
            candidates[i].paper,
            fused,
            _stages(candidates[i], mode, rerank=float(scores[i])),
        )
        for i, fused in fuse(scores, settings.rerank_weight, settings.rerank_rrf_k)
    ]
    tail = [_first_stage_hit(h, mode) for h in candidates[window:]]
    return (ordered + tail)[:top_k]


def _stages(hit: Hit, mode: str, rerank: float | None = None) -> StageScores:
    return StageScores(
        dense=hit.dense_score,
        sparse=hit.sparse_score,
        fused=hit.score if mode == "hybrid" else None,
        rerank=rerank,
    )


def _first_stage_hit(hit: Hit, mode: str) -> SearchHit:
    return SearchHit(hit.paper, hit.score, _stages(hit, mode))


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)

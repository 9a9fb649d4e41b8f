"""The search pipeline: validate -> encode -> retrieve -> rerank (optional, never fatal) ->
relevance cut-off (optional).

One implementation for every transport: the gateway runs it over deployment handles, the CLI
and tests over the in-process backend. The rerank stage has its own time budget; if the
reranker is overloaded, slow or failing, the fused first-stage results are returned with
``reranked=False`` instead of an error.

Query feedback on by default (``index.prf_enabled``) doubles the index work of a hybrid search.
With ``search.feedback_max_in_flight``, it is shed under load: while more searches than that are
in flight in this pipeline, a search that left ``feedback`` unset runs without it (a search that
asks for it still gets it; ``SearchResult.feedback`` says which ran). Searches in flight is the
queue's length, not its speed: below saturation it stays short on any machine, past it it grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from papersearch.errors import NotReady, Overloaded
from papersearch.index.query import Explanation, Hit, Mode, StageRank
from papersearch.pipeline.backend import Backend
from papersearch.pipeline.query import (
    SearchHit,
    SearchQuery,
    SearchResult,
    StageScores,
    cut_below,
)
from papersearch.pipeline.rerank_depth import RerankDepth
from papersearch.reranker.fusion import fuse
from papersearch.settings import SearchSettings

log = logging.getLogger(__name__)

ANSWER_MARGIN_S = 0.05  # of a caller's deadline, left after the rerank stage for the answer


class SearchPipeline:
    def __init__(
        self, backend: Backend, settings: SearchSettings, rerank_timeout_s: float = 2.0
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.rerank_timeout_s = rerank_timeout_s
        self.rerank_depth = RerankDepth(settings, rerank_timeout_s)
        self.in_flight = 0  # searches begun and not yet answered

    async def search(self, query: SearchQuery, deadline: float | None = None) -> SearchResult:
        """``deadline``: the ``time.monotonic()`` by which the caller needs the answer (its
        client's deadline); the rerank stage then ends in time to answer without it."""
        query = query.validate(self.settings)
        self.in_flight += 1
        try:
            return await self._search(query, deadline)
        finally:
            self.in_flight -= 1

    def _feedback_of(self, query: SearchQuery) -> bool | None:
        """The search's ``feedback``: as asked; unset, False while the searches in flight
        (this one included) are more than ``search.feedback_max_in_flight``, else unset (the
        index's default)."""
        limit = self.settings.feedback_max_in_flight
        if query.feedback is None and limit is not None and self.in_flight > limit:
            return False
        return query.feedback

    async def _search(self, query: SearchQuery, deadline: float | None) -> SearchResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        backend = self.backend.pinned()  # one embedder for the query and the collection
        vector = None
        if query.mode != "sparse":
            vector = await backend.encode_query(query.text)
        timings["encode"] = _ms_since(started)
        rerank = query.rerank and self.settings.rerank_enabled and self.backend.has_reranker
        window = self.rerank_depth.choose() if rerank else 0  # counted from now
        depth = max(query.top_k, self.settings.rerank_top_n) if rerank else query.top_k
        mark = time.perf_counter()
        try:
            retrieved = await backend.retrieve(
                query.text, vector, query.mode, depth, query.filter, query.explain,
                self._feedback_of(query)
            )
        except BaseException:
            self.rerank_depth.dropped(window)
            raise
        candidates = retrieved.hits
        timings["retrieve"] = _ms_since(mark)
        reranked = None
        budget = self._rerank_budget(deadline)
        if window and candidates and self._fits(window, budget):
            mark = time.perf_counter()
            reranked = await self._rerank(query, window, candidates, retrieved.mode, budget)
            timings["rerank"] = _ms_since(mark)
        else:
            self.rerank_depth.dropped(window)
        ranked = reranked or [_first_stage_hit(h, retrieved.mode)
                              for h in candidates[: query.top_k]]
        hits, dropped = cut_below(tuple(ranked), query.min_relevance)
        timings["total"] = _ms_since(started)
        return SearchResult(hits, reranked is not None, timings, dropped,
                            min(window, len(candidates)) if reranked else 0, retrieved.feedback,
                            window if reranked else 0)

    def _rerank_budget(self, deadline: float | None) -> float:
        """The rerank stage's time: ``rerank_timeout_s``, cut to what the caller's deadline
        leaves after ``ANSWER_MARGIN_S``. A deadline shorter than the budget had failed the
        whole search when the reranker was slow, where a timed-out rerank answers unreranked;
        and a search cut by its deadline measured nothing, so the windows never shrank."""
        if deadline is None:
            return self.rerank_timeout_s
        return min(self.rerank_timeout_s, deadline - time.monotonic() - ANSWER_MARGIN_S)

    def _fits(self, window: int, budget_s: float) -> bool:
        """Whether a rerank can end within ``budget_s``: some time left, and, where the caller's
        deadline cut the budget, the window's predicted time within it (sent anyway, it would
        likely be cut), or the reranker unmeasured for PROBE_S: a window never sent is never
        measured, and after one slow or refused call the callers with short deadlines had no
        rerank again."""
        if budget_s <= 0:
            return False
        pair_s = self.rerank_depth.pair_s
        return (budget_s >= self.rerank_timeout_s or pair_s is None
                or window * pair_s <= budget_s or self.rerank_depth.probe())

    async def _rerank(self, query: SearchQuery, chosen: int, candidates: Sequence[Hit],
                      mode: Mode, budget_s: float) -> list[SearchHit] | None:
        started = time.perf_counter()
        window = candidates[:chosen]
        ahead = self.rerank_depth.sent(chosen, len(window))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop the caller's cancel.
            async with asyncio.timeout(budget_s):
                scores = await self.backend.rerank(query.text, [h.paper.text for h in window])
        except asyncio.CancelledError:
            self.rerank_depth.cancelled(len(window))
            raise
        except Exception as error:  # overload, timeout, replica failure: degrade, don't fail
            taken = time.perf_counter() - started
            if isinstance(error, Overloaded | NotReady | TimeoutError):
                # refused at once: the reranker has no room, it was not fast (read as a quick
                # call, a refusal made the next windows the deepest); or cut by the budget: it
                # would have taken longer. Both count as the budget the call had, what is
                # known of them (the whole rerank_timeout_s, for a budget the caller's
                # deadline cut, made a short deadline's windows look too slow for long)
                taken = max(taken, budget_s)
            self.rerank_depth.observe(len(window), taken, ahead)
            # a budget the caller's deadline cut ran out: the client's doing, not a fault of
            # the reranker (a tight client deadline alone raised this WARNING's rate)
            cut = isinstance(error, TimeoutError) and budget_s < self.rerank_timeout_s
            log.log(logging.DEBUG if cut else logging.WARNING, "rerank skipped", extra={
                "reason": type(error).__name__, "window": len(window),
                "budget_s": round(budget_s, 3)})
            return None
        self.rerank_depth.observe(len(window), time.perf_counter() - started, ahead)
        return rerank_hits(candidates, scores, mode, query.top_k, self.settings)


def rerank_hits(
    candidates: Sequence[Hit],
    scores: Sequence[float] | np.ndarray,
    mode: Mode,
    top_k: int,
    settings: SearchSettings,
) -> list[SearchHit]:
    """Final ranking: the fused window first, then the first-stage tail, cut at top_k. A
    tail hit scores as the fusion would with its first-stage rank as its rerank rank too,
    1 / (k + rank), below every fused score of the window: the scores stay in order."""
    window = len(scores)
    rerank_rank = {int(i): r for r, i in enumerate(np.argsort(-np.asarray(scores),
                                                               kind="stable"), start=1)}
    ordered = [
        SearchHit(candidates[i].paper, fused, _stages(candidates[i], mode, float(scores[i])),
                  _with_rerank(candidates[i].explanation, i, rerank_rank[i], float(scores[i]),
                               fused, settings))
        for i, fused in fuse(scores, settings.rerank_weight, settings.rerank_rrf_k)
    ]
    tail = [_below_the_window(h, mode, rank, settings.rerank_rrf_k)
            for rank, h in enumerate(candidates[window:top_k], start=window + 1)]
    return (ordered + tail)[:top_k]


def _below_the_window(hit: Hit, mode: str, rank: int, k: float) -> SearchHit:
    score = 1.0 / (k + rank)
    explanation = hit.explanation
    if explanation is not None:  # the stage ran, and did not rank it (unset: did not run)
        explanation = replace(explanation, rerank=StageRank(None, None), fusion=_then(
            explanation.fusion,
            f"below the rerank window: 1 / ({k:g} + first-stage rank {rank}) = {score:.4f}"))
    return SearchHit(hit.paper, score, _stages(hit, mode), explanation)


def _then(fusion: str, formula: str) -> str:
    """An explanation's fusion text with the rerank stage's formula after the first stage's."""
    return "; ".join(f for f in (fusion, formula) if f)


def _with_rerank(explanation: Explanation | None, position: int, rank: int, score: float,
                 fused: float, settings: SearchSettings) -> Explanation | None:
    """A reranked hit's explanation: the reranker's rank and score, and the rank fusion that
    placed it (reranker/fusion.py) after the first stage's."""
    if explanation is None:
        return None
    weight, k = settings.rerank_weight, settings.rerank_rrf_k
    formula = (f"rerank: {weight:g} / ({k:g} + rerank rank) + {1 - weight:g} / ({k:g} + "
               f"first-stage rank) = {weight:g} / ({k:g} + {rank}) + {1 - weight:g} / "
               f"({k:g} + {position + 1}) = {fused:.4f}")
    inputs = {**explanation.fusion_inputs, "rerank_weight": weight, "rerank_rrf_k": k,
              "first_stage_rank": position + 1}
    return replace(explanation, rerank=StageRank(rank, score), fusion_inputs=inputs,
                   fusion=_then(explanation.fusion, formula))


def _stages(hit: Hit, mode: str, rerank: float | None = None) -> StageScores:
    return StageScores(
        dense=hit.dense_score,
        sparse=hit.sparse_score,
        fused=hit.score if mode == "hybrid" else None,
        rerank=rerank,
    )


def _first_stage_hit(hit: Hit, mode: str) -> SearchHit:
    return SearchHit(hit.paper, hit.score, _stages(hit, mode), hit.explanation)


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)

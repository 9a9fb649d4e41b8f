"""What a search asks for (validated) and what it returns, independent of transport."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import get_args

from papersearch.corpus.paper import Paper, clean_text
from papersearch.index.query import Explanation, Mode, SearchFilter
from papersearch.settings import SearchSettings


class InvalidQuery(ValueError):
    """A client's mistake in a search request (maps to INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One search. ``min_relevance`` (None: off) drops the final hits whose dense cosine
    similarity to the query is below it, order kept; it needs mode dense or hybrid.
    ``feedback`` (None: the server's ``index.prf_enabled``) runs query feedback on a hybrid
    search (retriever/feedback.py); dense and sparse searches have none."""

    text: str
    top_k: int = 10
    mode: Mode = "hybrid"
    rerank: bool = True
    filter: SearchFilter = field(default_factory=SearchFilter)
    min_relevance: float | None = None
    explain: bool = False
    feedback: bool | None = None

    def validate(self, limits: SearchSettings) -> SearchQuery:
        """The query with its text cleaned as papers' are (``clean_text``: a soft hyphen or a
        zero-width joiner inside a word had made a BM25 term no paper holds), if acceptable;
        else raise InvalidQuery saying what is wrong."""
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidQuery("query must not be empty")
        if len(self.text) > limits.max_query_chars:  # first: clean_text is a Python loop
            raise InvalidQuery(
                f"query is {len(self.text)} characters; the limit is {limits.max_query_chars}"
            )
        cleaned = clean_text(self.text)
        if not cleaned:  # "\u200b", "\x00": searched as an empty text was
            raise InvalidQuery("query must not be empty: it holds only control or zero-width "
                               "characters")
        if len(cleaned) > limits.max_query_chars:  # NFC expands some: "\ufb2c" is three
            raise InvalidQuery(f"query is {len(cleaned)} characters once normalised (NFC); "
                               f"the limit is {limits.max_query_chars}")
        if not 1 <= self.top_k <= limits.max_top_k:
            raise InvalidQuery(f"top_k must be between 1 and {limits.max_top_k}, got {self.top_k}")
        if self.mode not in get_args(Mode):
            raise InvalidQuery(f"unknown mode {self.mode!r}; use one of {get_args(Mode)}")
        if self.min_relevance is not None:
            self._validate_min_relevance(self.min_relevance)
        return self if cleaned == self.text else replace(self, text=cleaned)

    def _validate_min_relevance(self, value: float) -> None:
        if not -1.0 <= value <= 1.0:  # NaN fails every comparison
            raise InvalidQuery(f"min_relevance must be between -1 and 1 (a cosine), got {value}")
        if self.mode == "sparse":
            raise InvalidQuery(
                "min_relevance needs mode dense or hybrid: it is a cosine similarity to the "
                "query embedding, which sparse mode does not compute"
            )


@dataclass(frozen=True, slots=True)
class StageScores:
    dense: float | None = None
    sparse: float | None = None
    fused: float | None = None
    rerank: float | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    paper: Paper
    score: float
    stages: StageScores
    explanation: Explanation | None = None  # with SearchQuery.explain


@dataclass(frozen=True, slots=True)
class SearchResult:
    """``below_min_relevance``: hits of the requested top_k that the query's min_relevance
    dropped (0 without one); ``rerank_depth``: the candidates the reranker scored (0 when not
    reranked; pipeline/rerank_depth.py); ``feedback``: query feedback expanded the query
    (retriever/feedback.py); ``rerank_window``: the ladder's window the search was given (0:
    none), which ``rerank_depth`` is unless fewer candidates came (the gateway's own: not in
    the response, not compared)."""

    hits: tuple[SearchHit, ...]
    reranked: bool
    timings_ms: dict[str, float]
    below_min_relevance: int = 0
    rerank_depth: int = 0
    feedback: bool = False
    rerank_window: int = field(default=0, compare=False)


def cut_below(
    hits: tuple[SearchHit, ...], min_relevance: float | None
) -> tuple[tuple[SearchHit, ...], int]:
    """The hits whose dense cosine is at least ``min_relevance`` (all of them for None), in
    order, and how many were dropped. A hit without a dense score cannot meet it: dropped."""
    if min_relevance is None:
        return hits, 0
    kept = tuple(
        h for h in hits if h.stages.dense is not None and h.stages.dense >= min_relevance
    )
    return kept, len(hits) - len(kept)

"""What a search asks for (validated) and what it returns, independent of transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from papersearch.corpus.paper import Paper
from papersearch.index.query import Mode, SearchFilter
from papersearch.settings import SearchSettings

QUOTE_CHARS = 64  # the most of a client's value an error message repeats


class InvalidQuery(ValueError):
    """A client's mistake in a search request (maps to INVALID_ARGUMENT)."""


def quoted(value: str, limit: int = QUOTE_CHARS) -> str:
    """A client's value for an error message: escaped like repr, cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    top_k: int = 10
    mode: Mode = "hybrid"
    rerank: bool = True
    filter: SearchFilter = field(default_factory=SearchFilter)

    def validate(self, limits: SearchSettings) -> SearchQuery:
        """Return self if acceptable, else raise InvalidQuery saying what is wrong."""
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidQuery("query must not be empty")
        if len(self.text) > limits.max_query_chars:
            raise InvalidQuery(
                f"query is {len(self.text)} characters; the limit is {limits.max_query_chars}"
            )
        if not 1 <= self.top_k <= limits.max_top_k:
            raise InvalidQuery(f"top_k must be between 1 and {limits.max_top_k}, got {self.top_k}")
        if self.mode not in get_args(Mode):
            raise InvalidQuery(f"unknown mode {self.mode!r}; use one of {get_args(Mode)}")
        return self


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


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: tuple[SearchHit, ...]
    reranked: bool
    timings_ms: dict[str, float]

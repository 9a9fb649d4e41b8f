"""What callers ask the index (SearchRequest, SearchFilter) and what they get back (Hit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal, get_args

import numpy as np

from papersearch.corpus.paper import Paper, quoted
from papersearch.index.sparse import SparseLike, SparseVector
from papersearch.settings import MAX_COUNT, FusionMethod, RecommendStrategy

Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[Mode, ...] = get_args(Mode)
RECOMMEND_STRATEGIES: tuple[RecommendStrategy, ...] = get_args(RecommendStrategy)
# The shortest dense vector with a direction the engines agree on. Qdrant normalizes a vector
# for cosine only where its squared norm is at least float32's epsilon, qdrant-client's local
# mode any non-zero one: a shorter one scored ~0 against every paper on the embedded engine and
# a true cosine in local mode (a zero one: 0.0 everywhere, the hits in each engine's own order).
MIN_NORM = float(np.sqrt(np.finfo(np.float32).eps))


def check_count(name: str, value: int) -> None:
    """Refuse a count no search can mean, in words of our own rather than each engine's."""
    if not 1 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be between 1 and {MAX_COUNT}, got {value}")


def too_short(vectors: np.ndarray) -> np.ndarray:
    """Whether each vector (along the last axis) has a norm below MIN_NORM: no direction."""
    return np.asarray(np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=-1) < MIN_NORM)


@dataclass(frozen=True, slots=True)
class Examples:
    """Papers to find more like (``positive``, at least one) and unlike (``negative``), by
    their stored dense vectors; ``strategy`` says how they are combined (None: the index's
    setting) (Qdrant's recommend
    strategies: average_vector searches for 2 x mean(positives) - mean(negatives); best_score
    and sum_scores score each candidate against every example)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()
    strategy: RecommendStrategy | None = None  # None: index.recommend_strategy

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):  # a str was taken one id per character
            if isinstance(getattr(self, name), str):
                raise TypeError(f"Examples {name}: paper ids (a tuple), not one str: "
                                f"({getattr(self, name)!r},)")
        object.__setattr__(self, "positive", tuple(dict.fromkeys(self.positive)))
        object.__setattr__(self, "negative", tuple(dict.fromkeys(self.negative)))
        if not self.positive:
            raise ValueError("at least one positive example paper is needed")
        both = set(self.positive) & set(self.negative)
        if both:
            raise ValueError(f"paper {quoted(sorted(both)[0])} is both a positive and a "
                             "negative example")
        if self.strategy is not None and self.strategy not in RECOMMEND_STRATEGIES:
            raise ValueError(f"unknown recommend strategy {quoted(str(self.strategy))}")

    @property
    def ids(self) -> tuple[str, ...]:
        return self.positive + self.negative


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Conditions AND-ed together; within categories or authors any one value matches.

    The date range is inclusive at both ends; papers without a date never match a range.
    """

    published_from: date | None = None
    published_to: date | None = None
    categories: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("categories", "authors"):  # a str was taken one name per character
            names = getattr(self, name)
            if isinstance(names, str):
                raise TypeError(f"SearchFilter {name}: names (a tuple), not one str: "
                                f"({names!r},)")
            object.__setattr__(self, name, tuple(names))
            odd = [each for each in getattr(self, name) if not isinstance(each, str)]
            if odd:
                raise TypeError(f"SearchFilter {name}: names are str, got {odd[0]!r}")
        for name in ("published_from", "published_to"):  # a datetime is a date: its time
            bound = getattr(self, name)  # moved the inclusive range by hours
            if bound is not None and (isinstance(bound, datetime) or
                                      not isinstance(bound, date)):
                raise TypeError(f"SearchFilter {name}: a datetime.date (a day), got "
                                f"{type(bound).__name__} {bound!r}")
        if self.published_from and self.published_to and self.published_from > self.published_to:
            raise ValueError("published_from is after published_to")

    def published_range(self) -> tuple[str | None, str | None] | None:
        """(gte, lt) ISO dates for the engine's datetime range, or None without a date bound.

        A range up to date.max (9999-12-31) has no day after it: it is open at the end and
        starts at date.min at the latest, so that papers without a date still never match.
        """
        if self.published_from is None and self.published_to is None:
            return None
        start = self.published_from.isoformat() if self.published_from else None
        if self.published_to is None:
            return start, None
        if self.published_to == date.max:
            return start or date.min.isoformat(), None
        return start, (self.published_to + timedelta(days=1)).isoformat()


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search. Settings supply prefetch_limit, fusion, rrf_k, dense_weight and hnsw_ef when
    left None.

    ``rrf_k`` is Qdrant's: a point's RRF score is the sum over prefetches of 1 / (k + rank)
    with rank counted from 0, so k=61 here equals the RRF paper's k=60 (ranks from 1).
    ``exact`` bypasses HNSW and quantization (ground truth, slow on large collections).
    """

    mode: Mode = "hybrid"
    dense: Sequence[float] | np.ndarray | None = None
    sparse: SparseLike | None = None
    limit: int = 10
    filter: SearchFilter = field(default_factory=SearchFilter)
    prefetch_limit: int | None = None
    fusion: FusionMethod | None = None
    rrf_k: int | None = None
    dense_weight: float | None = None
    hnsw_ef: int | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        if self.dense is not None:
            with np.errstate(over="ignore"):  # too large for float32: inf, refused below
                values = np.asarray(self.dense, dtype=np.float32).ravel()
            if not values.size or not np.isfinite(values).all():
                raise ValueError("dense query vector must be non-empty and finite")
            if too_short(values):
                raise ValueError(f"dense query vector must have a norm of at least "
                                 f"{MIN_NORM:.1e}: a zero vector has no direction to search")
            object.__setattr__(self, "dense", tuple(values.tolist()))
        if self.sparse is not None:
            object.__setattr__(self, "sparse", SparseVector.of(self.sparse))
        if self.mode in ("dense", "hybrid") and self.dense is None:
            raise ValueError(f"mode {self.mode!r} needs a dense query vector")
        if self.mode in ("sparse", "hybrid") and self.sparse is None:
            raise ValueError(f"mode {self.mode!r} needs a sparse query vector")
        if self.dense_weight is not None and not 0.0 <= self.dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be in [0, 1], got {self.dense_weight}")
        for name in ("limit", "prefetch_limit", "rrf_k", "hnsw_ef"):
            value = getattr(self, name)
            if value is not None:
                check_count(name, value)

    def dense_vector(self) -> tuple[float, ...]:
        if self.dense is None:
            raise ValueError("request has no dense query vector")
        return tuple(self.dense)

    def sparse_vector(self) -> SparseVector:
        if self.sparse is None:
            raise ValueError("request has no sparse query vector")
        return SparseVector.of(self.sparse)


@dataclass(frozen=True, slots=True)
class StageRank:
    """A hit's place in one stage's list: its rank from 1 (None: not within the list's depth)
    and that stage's score for it (None: the stage found no match)."""

    rank: int | None
    score: float | None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a hit ranks where it does (``explain``): its rank and score in each stage that ran,
    the fusion formula with this hit's inputs, and the BM25 query terms it matched with each
    one's part of its BM25 score (largest first; their sum is the BM25 score). With query
    feedback the stages are those of the expanded query (what the fusion used), so the dense
    score here may differ from the hit's own (its cosine to the query as asked)."""

    dense: StageRank | None = None
    sparse: StageRank | None = None
    fused: StageRank | None = None
    fusion: str = ""
    fusion_inputs: Mapping[str, float] = field(default_factory=dict)
    terms: tuple[tuple[str, float], ...] = ()
    rerank: StageRank | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """A ranked paper. ``score`` is the final (fused in hybrid mode) score.

    ``dense_score`` is the cosine similarity and ``sparse_score`` the BM25 score (with IDF)
    of the paper for the query, or None where that stage was not run or found no match
    (no query term in the paper). With query feedback, ``dense_score`` is still the cosine to
    the query as asked, ``sparse_score`` the expanded query's BM25 score.
    """

    paper: Paper
    score: float
    dense_score: float | None = None
    sparse_score: float | None = None
    explanation: Explanation | None = None

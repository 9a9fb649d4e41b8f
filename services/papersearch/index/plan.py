"""Engine-neutral operations: the Store builds these, each backend translates them 1:1."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from papersearch.index.query import FusionMethod, SearchFilter
from papersearch.index.sparse import SparseVector


@dataclass(frozen=True, slots=True)
class Nearest:
    """Nearest neighbours of one vector in the named vector space ``using``."""

    using: str
    vector: tuple[float, ...] | SparseVector
    limit: int


@dataclass(frozen=True, slots=True)
class Fused:
    """Query API fusion of several prefetches."""

    prefetch: tuple[Nearest, ...]
    method: FusionMethod
    rrf_k: int
    limit: int


@dataclass(frozen=True, slots=True)
class Plan:
    """One query: the filter (and id restrictions) apply to every prefetch and the result."""

    query: Nearest | Fused
    filter: SearchFilter = field(default_factory=SearchFilter)
    only_ids: frozenset[str] | None = None
    exclude_ids: frozenset[str] = frozenset()
    hnsw_ef: int | None = None
    exact: bool = False
    with_payload: bool = True


@dataclass(frozen=True, slots=True)
class Scored:
    point_id: str
    score: float
    payload: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class PointData:
    """A point to write. An empty sparse vector is left out (the point has no BM25 terms)."""

    point_id: str
    dense: list[float]
    sparse: SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    point_id: str
    payload: Mapping[str, Any] | None
    dense: list[float] | None

"""Engine-neutral operations: the Store builds these, each backend translates them 1:1.

A Store operation is a *program*: a generator that yields engine steps (``Batch``, ``Fetch``,
``Scan``, ``Write``, ``Remove``, ``Count``), is sent each step's result and returns the
operation's.
The same program runs on a backend's own synchronous primitives (``Store.execute``) or on an
asyncio client (index/server_async.py), so both read the same request the same way.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

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
class Recommend:
    """Qdrant's recommend query in the vector space ``using``, scoring each candidate against
    every example (strategy best_score or sum_scores)."""

    using: str
    positives: tuple[tuple[float, ...], ...]
    negatives: tuple[tuple[float, ...], ...]
    strategy: Literal["best_score", "sum_scores"]
    limit: int


@dataclass(frozen=True, slots=True)
class Plan:
    """One query: the filter (and id restrictions) apply to every prefetch and the result."""

    query: Nearest | Fused | Recommend
    filter: SearchFilter = field(default_factory=SearchFilter)
    only_ids: frozenset[str] | None = None
    exclude_ids: frozenset[str] = frozenset()
    hnsw_ef: int | None = None
    exact: bool = False
    oversampling: float | None = None  # int8 collections: candidates per result, rescored
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
    sparse: SparseVector | None = None  # asked for and stored (a paper with no BM25 term: None)


# A point of a ``keyed`` Batch: (key, score). The key is the cheapest hashable the engine
# gives for the point's id, equal for the same point in every list of the batch and ordered as
# the point ids are (the convex fusion's ties go by it; the embedded engine's UUID.int orders as
# the UUID's text); the backend's Store.point_id_of turns it into the point id. A plain tuple: a
# search makes ~200 of them.
Keyed = tuple[Hashable, float]


@dataclass(frozen=True, slots=True)
class Batch:
    """Run plans as one batch; the result: one ranked ``list[Scored]`` per plan, or with
    ``keyed`` one ``list[Keyed]`` per plan (no payloads): for long lists fused in this process,
    of which only the top few ids are ever needed as strings (qdrant-edge gives a point's id
    as a ``uuid.UUID``, slow to format and to hash; README, Results: Cheaper convex searches)."""

    plans: tuple[Plan, ...]
    keyed: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read points by id (unknown ids skipped); the result: ``list[Record]``."""

    point_ids: tuple[str, ...]
    payload: bool
    dense: bool
    sparse: bool = False


@dataclass(frozen=True, slots=True)
class Scan:
    """One page of the points whose integer payload ``key`` (range-indexed) is at least
    ``since`` (None: every point, with the field or without), in the engine's id order,
    starting at point id ``offset`` (None: the first); each record carries only that payload
    field, no vectors. The result: ``ScanPage``."""

    key: str
    since: int | None
    limit: int
    offset: str | None = None


@dataclass(frozen=True, slots=True)
class ScanPage:
    records: list[Record]
    next_offset: str | None  # None: the last page


@dataclass(frozen=True, slots=True)
class Write:
    """Upsert points, acknowledged once applied; the result: None."""

    points: tuple[PointData, ...]


@dataclass(frozen=True, slots=True)
class Remove:
    """Delete points by id (unknown ids ignored); the result: None."""

    point_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Count:
    """Exact number of points; the result: int."""


Step = Batch | Fetch | Scan | Write | Remove | Count
T = TypeVar("T")
Program = Generator[Step, Any, T]


def advance(program: Program[Any], sent: object) -> tuple[bool, Any]:
    """The program's next step (False, step), or its end (True, result): a StopIteration
    cannot cross from a worker thread into an asyncio future."""
    try:
        return False, program.send(sent)
    except StopIteration as done:
        return True, done.value

"""The Store interface: one collection of papers with dense and BM25 vectors.

Backends implement a few engine primitives (``_open``, ``_write``, ``_retrieve``, ``_delete``,
``_count``, ``_run``, ``_close``); validation, batching, query planning and hit assembly live
here, so both backends answer the same request with the same engine operations.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import ClassVar, TypeVar

import numpy as np

from papersearch.corpus.paper import Paper, point_id
from papersearch.index.errors import PaperNotFound, StoreError
from papersearch.index.plan import Fused, Nearest, Plan, PointData, Record, Scored
from papersearch.index.query import Hit, SearchFilter, SearchRequest
from papersearch.index.schema import DENSE, SPARSE, EmbedderIdentity, from_payload, to_payload
from papersearch.index.sparse import SparseLike, SparseVector
from papersearch.settings import IndexSettings

logger = logging.getLogger(__name__)

_RETRIEVE_CHUNK = 1024
T = TypeVar("T")


class Store(ABC):
    """A paper collection. Call ``ensure_collection`` before anything else; ``close`` at the end."""

    backend: ClassVar[str]

    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self._identity: EmbedderIdentity | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_collection(self, dim: int, embedder_sha: str, *, create: bool = True) -> None:
        """Open the collection (creating it if allowed) and check who built it.

        Raises EmbedderMismatch if it was built by another embedder (sha or dim),
        CollectionMissing if absent and ``create`` is false, StoreUnavailable if unreachable.
        """
        identity = EmbedderIdentity(embedder_sha, dim)
        if self._identity is not None:
            identity.require(self._identity, self.describe())
            return
        self._open(identity, create)
        self._identity = identity
        logger.info(
            "index open",
            extra={"backend": self.backend, "collection": self.describe(), "points": self.count()},
        )

    @property
    def identity(self) -> EmbedderIdentity:
        return self._require_open()

    def optimize(self) -> None:  # noqa: B027 (a default, not an abstract hook)
        """Bring indexes up to date after bulk writes (a no-op where the engine does it itself)."""

    def close(self) -> None:
        """Persist everything acknowledged and release the engine; safe to call twice."""
        self._close()
        self._identity = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self, papers: Sequence[Paper], dense: np.ndarray, sparse: Sequence[SparseLike]
    ) -> int:
        """Insert or replace papers (id: ``Paper.point_id``); returns how many were written.

        Inputs are validated before anything is written. Each ``upsert_batch_size`` chunk is
        one engine operation; should one fail, earlier chunks stay written, and a retry of the
        whole call is safe because point ids are deterministic.
        """
        vectors = self._check_vectors(papers, dense, sparse)
        points = [
            PointData(paper.point_id, vector.tolist(), SparseVector.of(terms), to_payload(paper))
            for paper, vector, terms in zip(papers, vectors, sparse, strict=True)
        ]
        for chunk in _chunks(points, self.settings.upsert_batch_size):
            self._write(chunk)
        logger.debug("upserted", extra={"collection": self.describe(), "papers": len(points)})
        return len(points)

    def delete(self, paper_ids: Iterable[str]) -> None:
        """Delete papers by paper id; unknown ids are ignored."""
        self._require_open()
        ids = [point_id(pid) for pid in dict.fromkeys(paper_ids)]
        for chunk in _chunks(ids, _RETRIEVE_CHUNK):
            self._delete(chunk)

    # -- reads -------------------------------------------------------------------------------

    def count(self) -> int:
        self._require_open()
        return self._count()

    def probe(self) -> int:
        """Readiness: the open collection still there and answering; its point count. Raises
        StoreUnavailable (unreachable) or CollectionMissing (gone since it was opened)."""
        return self.count()

    def existing_ids(self, point_ids: Iterable[str]) -> set[str]:
        """The subset of ``point_ids`` (``Paper.point_id`` values) already stored."""
        self._require_open()
        ids = list(dict.fromkeys(point_ids))
        found: set[str] = set()
        for chunk in _chunks(ids, _RETRIEVE_CHUNK):
            found.update(r.point_id for r in self._retrieve(chunk, payload=False, dense=False))
        return found

    def get(self, paper_ids: Sequence[str]) -> list[Paper]:
        """Stored papers in the order asked; unknown ids are skipped."""
        self._require_open()
        wanted = [point_id(pid) for pid in paper_ids]
        by_id: dict[str, Record] = {}
        for chunk in _chunks(list(dict.fromkeys(wanted)), _RETRIEVE_CHUNK):
            by_id.update((r.point_id, r) for r in self._retrieve(chunk, payload=True, dense=False))
        return [from_payload(by_id[p].payload or {}) for p in wanted if p in by_id]

    def query(self, request: SearchRequest) -> list[Hit]:
        """Run a dense, sparse or hybrid (prefetch both, fuse) search."""
        plan = self._plan(request)
        (results,) = self._run([plan])
        if request.mode == "dense":
            return [_hit(s, dense=s.score) for s in results]
        if request.mode == "sparse":
            return [_hit(s, sparse=s.score) for s in results]
        return self._with_components(request, results)

    def similar(
        self, paper_id: str, limit: int = 10, filter: SearchFilter | None = None
    ) -> list[Hit]:
        """Papers nearest to a stored paper's own dense vector, the paper itself excluded."""
        self._require_open()
        pid = point_id(paper_id)
        records = self._retrieve([pid], payload=False, dense=True)
        if not records or records[0].dense is None:
            raise PaperNotFound(paper_id)
        plan = Plan(
            Nearest(DENSE, tuple(records[0].dense), limit),
            filter or SearchFilter(),
            exclude_ids=frozenset({pid}),
            hnsw_ef=self.settings.hnsw_ef,
        )
        (results,) = self._run([plan])
        return [_hit(s, dense=s.score) for s in results]

    def describe(self) -> str:
        return f"{self.backend}:{self.settings.collection}"

    # -- shared internals --------------------------------------------------------------------

    def _require_open(self) -> EmbedderIdentity:
        if self._identity is None:
            raise StoreError("collection not open: call ensure_collection(dim, embedder_sha)")
        return self._identity

    def _check_vectors(
        self, papers: Sequence[Paper], dense: np.ndarray, sparse: Sequence[SparseLike]
    ) -> np.ndarray:
        dim = self._require_open().dim
        vectors = np.asarray(dense, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ValueError(f"dense must be n x {dim}, got shape {vectors.shape}")
        if not len(papers) == len(vectors) == len(sparse):
            raise ValueError(
                f"{len(papers)} papers, {len(vectors)} dense and {len(sparse)} sparse vectors"
            )
        if not np.isfinite(vectors).all() or (np.linalg.norm(vectors, axis=1) == 0).any():
            raise ValueError("dense vectors must be finite and non-zero")
        if len({p.id for p in papers}) != len(papers):
            raise ValueError("duplicate paper ids in one upsert")
        return vectors

    def _plan(self, request: SearchRequest) -> Plan:
        dim = self._require_open().dim
        if request.dense is not None and len(request.dense) != dim:
            raise ValueError(f"dense query has dim {len(request.dense)}, collection {dim}")
        query: Nearest | Fused
        if request.mode == "dense":
            query = Nearest(DENSE, request.dense_vector(), request.limit)
        elif request.mode == "sparse":
            query = Nearest(SPARSE, request.sparse_vector(), request.limit)
        else:
            depth = max(request.prefetch_limit or self.settings.prefetch_limit, request.limit)
            query = Fused(
                (
                    Nearest(DENSE, request.dense_vector(), depth),
                    Nearest(SPARSE, request.sparse_vector(), depth),
                ),
                request.fusion or self.settings.fusion,
                request.rrf_k or self.settings.rrf_k,
                request.limit,
            )
        return Plan(
            query,
            request.filter,
            hnsw_ef=request.hnsw_ef or self.settings.hnsw_ef,
            exact=request.exact,
        )

    def _with_components(self, request: SearchRequest, fused: list[Scored]) -> list[Hit]:
        """Fused results carry only the fused score: score the hits again, per stage, exactly.

        Both stage queries are restricted to the fused hits' ids, so they are small and the
        scores are those of the whole query, not only of points inside a prefetch window.
        """
        if not fused:
            return []
        ids = frozenset(s.point_id for s in fused)
        vectors = ((DENSE, request.dense_vector()), (SPARSE, request.sparse_vector()))
        stages = [
            Plan(Nearest(using, vector, len(ids)), only_ids=ids, exact=True, with_payload=False)
            for using, vector in vectors
        ]
        dense_scores, sparse_scores = ({s.point_id: s.score for s in r} for r in self._run(stages))
        return [
            _hit(s, dense=dense_scores.get(s.point_id), sparse=sparse_scores.get(s.point_id))
            for s in fused
        ]

    # -- engine primitives -------------------------------------------------------------------

    @abstractmethod
    def _open(self, identity: EmbedderIdentity, create: bool) -> None:
        """Open or create the collection; raise EmbedderMismatch if built by another one."""

    @abstractmethod
    def _write(self, points: Sequence[PointData]) -> None: ...

    @abstractmethod
    def _retrieve(
        self, point_ids: Sequence[str], *, payload: bool, dense: bool
    ) -> list[Record]: ...

    @abstractmethod
    def _delete(self, point_ids: Sequence[str]) -> None: ...

    @abstractmethod
    def _count(self) -> int: ...

    @abstractmethod
    def _run(self, plans: Sequence[Plan]) -> list[list[Scored]]:
        """Run plans as one batch; one ranked result list per plan."""

    @abstractmethod
    def _close(self) -> None: ...


def _hit(scored: Scored, dense: float | None = None, sparse: float | None = None) -> Hit:
    return Hit(from_payload(scored.payload or {}), scored.score, dense, sparse)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

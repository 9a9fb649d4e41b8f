"""The Store interface: one collection of papers with dense and BM25 vectors.

Backends implement three engine primitives (``_open``, ``_do`` one step, ``_close``);
validation, batching, query planning and hit assembly live here, so both backends answer the
same request with the same engine operations. Each operation is written once, as a program of
engine steps (index/plan.py): ``query`` runs ``query_program`` on the backend's own primitives,
and the gateway's asyncio Qdrant client runs the very same program (index/server_async.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter, itemgetter
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import numpy as np

from papersearch.corpus.paper import Paper, point_id
from papersearch.index.errors import InvalidExamples, PaperNotFound, StoreError
from papersearch.index.explain import StageList, explain_hit
from papersearch.index.fusion import convex
from papersearch.index.plan import (
    Batch,
    Count,
    Fetch,
    Fused,
    Keyed,
    Nearest,
    Plan,
    PointData,
    Program,
    Recommend,
    Record,
    Remove,
    Scan,
    ScanPage,
    Scored,
    Step,
    Write,
)
from papersearch.index.query import (
    MIN_NORM,
    Examples,
    Hit,
    SearchFilter,
    SearchRequest,
    check_count,
    too_short,
)
from papersearch.index.schema import (
    DENSE,
    INDEXED_AT,
    SPARSE,
    Bm25Weighting,
    EmbedderIdentity,
    from_payload,
    to_payload,
)
from papersearch.index.sparse import SparseLike, SparseVector
from papersearch.settings import MAX_COUNT, IndexSettings

logger = logging.getLogger(__name__)

_RETRIEVE_CHUNK = 1024
# BM25 query terms an explained search itemises, each one more engine query: a long query
# holds hundreds, and explaining all of them took many times a search's index time (README:
# Results, Figures behind the limits). Past it, the terms no hit holds are dropped (exactly:
# they add nothing), then those the fewest hits hold; a hit's share of the rest is given
# whole (explain.OTHER_TERMS).
MAX_EXPLAINED_TERMS = 32
_SCAN_PAGE = 1024
# An engine-ranked search (dense, sparse, an rrf or dbsf hybrid, SimilarPapers) asks the engine
# for this many times its limit, and TIE_GROWTH times more while the papers tied at the cut run
# past what came back, up to TIE_DEPTH_MAX: equal scores are then ordered by point id and cut
# here (``_engine_ranked``).
TIE_MARGIN = 2
TIE_GROWTH = 4
TIE_DEPTH_MAX = 4096
T = TypeVar("T")


def now_ms() -> int:
    """The ``indexed_at`` stamp: this process's wall clock, milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Indexed:
    """What ``Store.indexed_since`` found: every point written since the time asked, by
    point id with its ``indexed_at``, and the papers among them that were not ``known``
    (with their dense vectors, rows in the order of ``papers``: oldest write first)."""

    window: dict[str, int]
    papers: list[Paper]
    dense: np.ndarray


class Store(ABC):
    """A paper collection. Call ``ensure_collection`` before anything else; ``close`` at the end."""

    backend: ClassVar[str]

    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self._identity: EmbedderIdentity | None = None
        self._weighting: Bm25Weighting | None = None  # as the collection records it
        # ensure_collection made the collection where nothing was (the embedded engine, its
        # directory new or empty: no other process writes there; a server's collection may be
        # another writer's as soon as it exists, so it is never taken for this store's own)
        self.created = False

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_collection(self, dim: int, embedder_sha: str, *, create: bool = True) -> None:
        """Open the collection (creating it if allowed) and check who built it.

        Raises EmbedderMismatch if it was built by another embedder (sha or dim),
        CollectionMissing if absent and ``create`` is false, StoreUnavailable if unreachable.
        """
        identity = EmbedderIdentity(embedder_sha, dim, Bm25Weighting.of(self.settings))
        if self._identity is not None:
            identity.require(self._identity, self.describe())
            return
        self._weighting = self._open(identity, create).bm25
        self._identity = identity
        try:
            logger.info("index open", extra={"backend": self.backend,
                                             "collection": self.describe(), "points": self.count()})
        except BaseException:
            # Ctrl-C or an error before the caller has the store: a collection this open made
            # would stay behind empty (`search` then said "0 hits", not "no index at")
            with contextlib.suppress(Exception):  # the first error is the one to tell
                self.close()
            self.remove_if_made()
            raise

    def remove_if_made(self) -> None:  # noqa: B027 (a default, not an abstract hook)
        """Remove the collection ``ensure_collection`` made (``created``), when it was cut
        short after ``_open`` or (after ``close``) an ingest stored nothing in it: `search`
        then says there is no index, not "0 hits". A no-op where nothing was made (and a
        server's collection is never this store's own)."""

    @property
    def _oversampling(self) -> float | None:
        """Search-time int8 oversampling (None: the engine's default, no oversampling)."""
        factor = self.settings.quantization_oversampling
        return factor if factor > 1.0 else None

    @property
    def identity(self) -> EmbedderIdentity:
        return self._require_open()

    def optimize(self) -> None:  # noqa: B027 (a default, not an abstract hook)
        """Bring indexes up to date after bulk writes (a no-op where the engine does it itself)."""

    def flush(self) -> None:  # noqa: B027 (a default, not an abstract hook)
        """Persist every acknowledged write now (a no-op where the engine does it per write)."""

    def point_id_of(self, key: Hashable) -> str:
        """A ``keyed`` Batch's key as its point id (index/plan.Keyed); a backend whose keys are
        not their ids' strings says how."""
        return str(key)

    def close(self) -> None:
        """Persist everything acknowledged and release the engine; safe to call twice. The
        engine is released even when persisting fails (the error is raised)."""
        try:
            self._close()
        finally:
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
        whole call is safe because point ids are deterministic. Every point is stamped with
        ``indexed_at`` (this process's clock, ``now_ms``) as it is sent.
        """
        return self.execute(self.upsert_program(papers, dense, sparse))

    def upsert_program(
        self, papers: Sequence[Paper], dense: np.ndarray, sparse: Sequence[SparseLike]
    ) -> Program[int]:
        vectors = self._check_vectors(papers, dense, sparse)
        Bm25Weighting.of(self.settings).require(self._weighting, f"index {self.describe()}")
        points = [
            PointData(paper.point_id, vector.tolist(), SparseVector.of(terms), to_payload(paper))
            for paper, vector, terms in zip(papers, vectors, sparse, strict=True)
        ]
        for chunk in _chunks(points, self.settings.upsert_batch_size):
            stamp = now_ms()
            yield Write(tuple(replace(p, payload={**p.payload, INDEXED_AT: stamp})
                              for p in chunk))
        logger.debug("upserted", extra={"collection": self.describe(), "papers": len(points)})
        return len(points)

    def delete(self, paper_ids: Iterable[str]) -> None:
        """Delete papers by paper id; unknown ids are ignored."""
        self.execute(self.delete_program(paper_ids))

    def delete_program(self, paper_ids: Iterable[str]) -> Program[None]:
        self._require_open()
        ids = [point_id(pid) for pid in dict.fromkeys(paper_ids)]
        for chunk in _chunks(ids, _RETRIEVE_CHUNK):
            yield Remove(tuple(chunk))

    # -- reads -------------------------------------------------------------------------------

    def count(self) -> int:
        return self.execute(self.probe_program())

    def probe(self) -> int:
        """Readiness: the open collection still there and answering; its point count. Raises
        StoreUnavailable (unreachable) or CollectionMissing (gone since it was opened)."""
        return self.count()

    def probe_program(self) -> Program[int]:
        self._require_open()
        count: int = yield Count()
        return count

    def existing_ids(self, point_ids: Iterable[str]) -> set[str]:
        """The subset of ``point_ids`` (``Paper.point_id`` values) already stored."""
        return self.execute(self.existing_ids_program(point_ids))

    def existing_ids_program(self, point_ids: Iterable[str]) -> Program[set[str]]:
        self._require_open()
        ids = list(dict.fromkeys(point_ids))
        found: set[str] = set()
        for chunk in _chunks(ids, _RETRIEVE_CHUNK):
            records: list[Record] = yield Fetch(tuple(chunk), payload=False, dense=False)
            found.update(r.point_id for r in records)
        return found

    def get(self, paper_ids: Sequence[str]) -> list[Paper]:
        """Stored papers in the order asked; unknown ids are skipped."""
        return self.execute(self.get_program(paper_ids))

    def get_program(self, paper_ids: Sequence[str]) -> Program[list[Paper]]:
        return (yield from self.papers_program([point_id(pid) for pid in paper_ids]))

    def papers_program(self, point_ids: Sequence[str]) -> Program[list[Paper]]:
        """Stored papers by point id (``Paper.point_id``), in the order asked; absent ids are
        skipped."""
        self._require_open()
        by_id: dict[str, Record] = {}
        for chunk in _chunks(list(dict.fromkeys(point_ids)), _RETRIEVE_CHUNK):
            records: list[Record] = yield Fetch(tuple(chunk), payload=True, dense=False)
            by_id.update((r.point_id, r) for r in records)
        return [from_payload(by_id[p].payload or {}) for p in point_ids if p in by_id]

    def point_ids_program(self) -> Program[list[str]]:
        """Every point id in the collection, stamped with ``indexed_at`` or not (points
        written before the stamp existed)."""
        self._require_open()
        return [r.point_id for r in (yield from self._scan_program(None))]

    def _scan_program(self, since_ms: int | None) -> Program[list[Record]]:
        """Every page of ``Scan(INDEXED_AT, since_ms)``: the records, ``indexed_at`` only."""
        records: list[Record] = []
        offset: str | None = None
        while True:
            page: ScanPage = yield Scan(INDEXED_AT, since_ms, _SCAN_PAGE, offset)
            records += page.records
            if page.next_offset is None:
                return records
            offset = page.next_offset

    def indexed_since(self, since_ms: int, known: Mapping[str, int] | None) -> Indexed:
        """Points written at or after ``since_ms`` (their ``indexed_at``), whoever wrote them.
        The papers written since and not in ``known`` (point id -> indexed_at, e.g. the last
        call's window) are fetched too; with ``known`` None only the window is read."""
        return self.execute(self.indexed_since_program(since_ms, known))

    def indexed_since_program(self, since_ms: int, known: Mapping[str, int] | None
                              ) -> Program[Indexed]:
        dim = self._require_open().dim
        window = {r.point_id: int((r.payload or {})[INDEXED_AT])
                  for r in (yield from self._scan_program(since_ms))}
        new = [] if known is None else sorted(
            (stamp, pid) for pid, stamp in window.items() if known.get(pid) != stamp)
        records: list[Record] = []
        for chunk in _chunks([pid for _, pid in new], _RETRIEVE_CHUNK):
            records += yield Fetch(tuple(chunk), payload=True, dense=True)
        by_id = {r.point_id: r for r in records if r.dense is not None and r.payload}
        fresh = [by_id[pid] for _, pid in new if pid in by_id]  # deleted since: skipped
        return Indexed(window, [from_payload(r.payload) for r in fresh if r.payload],
                       np.array([r.dense for r in fresh], dtype=np.float32).reshape(-1, dim))

    def query(self, request: SearchRequest) -> list[Hit]:
        """Run a dense, sparse or hybrid (prefetch both, fuse) search."""
        return self.execute(self.query_program(request))

    def query_program(self, request: SearchRequest) -> Program[list[Hit]]:
        if request.mode == "hybrid" and (request.fusion or self.settings.fusion) == "convex":
            return (yield from self._convex_program(request))
        results = yield from _engine_ranked(self._plan(request), request.limit)
        if request.mode == "dense":
            return [_hit(s, dense=s.score) for s in results]
        if request.mode == "sparse":
            return [_hit(s, sparse=s.score) for s in results]
        return (yield from self._with_components(request, results))

    def explain_program(self, request: SearchRequest, hits: Sequence[Hit],
                        labels: Mapping[int, str]) -> Program[list[Hit]]:
        """``hits`` (``request``'s answer) with their Explanation: each stage's list as the
        search saw it (ranks, the normalisation inputs) and, per BM25 query term, its score for
        every hit (``labels``: term index -> the query word); one batch, or two under convex
        fusion (its lists read to depth first), and a fetch first past MAX_EXPLAINED_TERMS."""
        if not hits:
            return []
        ids = frozenset(h.paper.point_id for h in hits)
        depth = max(request.prefetch_limit or self.settings.prefetch_limit, request.limit)
        hnsw_ef = request.hnsw_ef or self.settings.hnsw_ef
        stages: list[tuple[str, tuple[float, ...] | SparseVector]] = []
        if request.dense is not None:
            stages.append((DENSE, request.dense_vector()))
        terms: list[tuple[int, float]] = []
        if request.sparse is not None:
            sparse = request.sparse_vector()
            stages.append((SPARSE, sparse))
            terms = list(zip(sparse.indices, sparse.values, strict=True))
        others: dict[str, int] = {}  # point id -> query terms it holds, not itemised
        if len(terms) > MAX_EXPLAINED_TERMS:
            terms, others = yield from self._itemised_terms(terms, ids)
        plans = tuple(Plan(Nearest(using, vector, depth), request.filter, hnsw_ef=hnsw_ef,
                           exact=request.exact, oversampling=self._oversampling,
                           with_payload=False) for using, vector in stages)
        scoring = tuple(_scoring(SPARSE, SparseVector((index,), (weight,)), ids)
                        for index, weight in terms)
        # a convex fusion's lists as it had them (``_to_depth``), their ties by point id; rrf
        # and dbsf fused the engine's order, so their ranks are read in it (a single stage's
        # ranks are the answer's: explain_hit)
        settled = (request.fusion or self.settings.fusion) == "convex"
        results: list[list[Scored]]
        if settled:
            results = yield from _to_depth(plans, depth, keyed=False)
            results += (yield Batch(scoring)) if scoring else []
        else:
            results = yield Batch(plans + scoring)
        lists = {using: StageList.of(ranked, depth)
                 for (using, _), ranked in zip(stages, results, strict=False)}
        per_term = [(labels.get(index, f"#{index}"), {s.point_id: s.score for s in scored})
                    for (index, _), scored in zip(terms, results[len(stages):], strict=True)]
        return [replace(hit, explanation=explain_hit(
                    hit, rank, request, self.settings, lists, per_term,
                    others.get(hit.paper.point_id, 0)))
                for rank, hit in enumerate(hits, start=1)]

    def _itemised_terms(self, terms: Sequence[tuple[int, float]], ids: frozenset[str]
                        ) -> Program[tuple[list[tuple[int, float]], dict[str, int]]]:
        """The MAX_EXPLAINED_TERMS of ``terms`` held by the most of the hits ``ids`` (read
        from their stored BM25 vectors), in query order; and per hit, how many of the other
        query terms it holds."""
        records: list[Record] = yield Fetch(tuple(ids), payload=False, dense=False, sparse=True)
        held = {r.point_id: set(r.sparse.indices) if r.sparse is not None else set()
                for r in records}
        holders = {index: sum(index in indices for indices in held.values())
                   for index, _ in terms}
        ranked = sorted((n for n, (index, _) in enumerate(terms) if holders[index]),
                        key=lambda n: -holders[terms[n][0]])
        kept = sorted(ranked[:MAX_EXPLAINED_TERMS])
        rest = set(holders) - {terms[n][0] for n in kept}
        others = {pid: len(indices & rest) for pid, indices in held.items()}
        return [terms[n] for n in kept], others

    def feedback_program(self, request: SearchRequest) -> Program[list[Record]]:
        """The top ``limit`` papers of a hybrid search, with their dense and stored BM25
        vectors (no payloads), in rank order: what pseudo-relevance feedback reads
        (retriever/feedback.py). No stage scores are computed for them."""
        if (request.fusion or self.settings.fusion) == "convex":
            ranked: list[Scored] = yield from self._convex_ranked(request)
        else:
            ranked = yield from _engine_ranked(replace(self._plan(request), with_payload=False),
                                               request.limit)
        ids = [s.point_id for s in ranked]
        records: list[Record] = yield Fetch(tuple(ids), payload=False, dense=True, sparse=True)
        by_id = {r.point_id: r for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def any_match_program(self, request: SearchRequest) -> Program[bool]:
        """Whether any paper the request's filter passes holds one of its BM25 terms: one
        sparse query for a single point, without payload."""
        plan = Plan(Nearest(SPARSE, request.sparse_vector(), 1), request.filter,
                    with_payload=False)
        found: list[list[Scored]] = yield Batch((plan,))
        return bool(found[0])

    def cosines_program(self, vector: Sequence[float], hits: Sequence[Hit]) -> (
        Program[list[Hit]]
    ):
        """``hits`` with ``dense_score`` the exact cosine of each to ``vector``: query feedback
        searches with an expanded vector, and a hit's dense score (what ``min_relevance``
        cuts on) stays the cosine to the query as asked. One query restricted to their ids."""
        if not hits:
            return []
        ids = frozenset(h.paper.point_id for h in hits)
        found: list[list[Scored]] = yield Batch((_scoring(DENSE, tuple(vector), ids),))
        cosines = {s.point_id: s.score for s in found[0]}
        return [replace(h, dense_score=cosines.get(h.paper.point_id)) for h in hits]

    def _convex_program(self, request: SearchRequest) -> Program[list[Hit]]:
        """Hybrid search fused here (index/fusion.py): both prefetch lists without payloads,
        then the top ``limit`` with their payloads and per-stage scores (``_stage_scored``)."""
        lists = yield from self._convex_lists(request)
        return (yield from self._stage_scored(request, self._fused(request, lists), lists))

    def _convex_ranked(self, request: SearchRequest) -> Program[list[Scored]]:
        top = self._fused(request, (yield from self._convex_lists(request)))
        return [Scored(self.point_id_of(key), score, None) for key, score in top]

    def _convex_lists(self, request: SearchRequest) -> Program[list[list[Keyed]]]:
        self._check_dim(request)
        depth, hnsw_ef = self._depth(request), request.hnsw_ef or self.settings.hnsw_ef
        lists: list[list[Keyed]] = yield from _to_depth(tuple(
            Plan(Nearest(using, vector, depth), request.filter, hnsw_ef=hnsw_ef,
                 exact=request.exact, oversampling=self._oversampling, with_payload=False)
            for using, vector in ((DENSE, request.dense_vector()),
                                  (SPARSE, request.sparse_vector()))
        ), depth, keyed=True)
        return lists

    def _fused(self, request: SearchRequest, lists: Sequence[Sequence[Keyed]]) -> (
        list[tuple[Hashable, float]]
    ):
        """The top ``limit`` of the convex fusion of ``lists``, by engine id keys."""
        weight = (self.settings.fusion_dense_weight if request.dense_weight is None
                  else request.dense_weight)
        return convex(lists, (weight, 1.0 - weight), self._depth(request), top=request.limit,
                      ties_by_id=True)  # keys order as their point ids (index/plan.Keyed)

    def _depth(self, request: SearchRequest) -> int:
        return max(request.prefetch_limit or self.settings.prefetch_limit, request.limit)

    def _stage_scored(self, request: SearchRequest, top: Sequence[tuple[Hashable, float]],
                      lists: Sequence[Sequence[Keyed]]) -> Program[list[Hit]]:
        """``top`` (engine id key, fused score) as hits, each with its payload (one fetch) and
        its score per stage.

        A stage's score is taken from its prefetch list, which holds it exactly (BM25 scores;
        dense cosines, of the original vectors also in an int8 collection: searches rescore).
        A list shorter than its window holds every match, so a hit absent from it has none
        (BM25: no query term in the paper). Only hits whose score a list could not give are
        scored again, by a query restricted to their ids, as ``_with_components`` scores every
        hit of an engine-fused search.
        """
        if not top:
            return []
        ids = [self.point_id_of(key) for key, _ in top]
        depth = self._depth(request)
        scores: list[dict[str, float]] = []
        stages: list[tuple[dict[str, float], Plan]] = []
        vectors: tuple[tuple[str, tuple[float, ...] | SparseVector], ...] = (
            (DENSE, request.dense_vector()), (SPARSE, request.sparse_vector()))
        for (using, vector), ranked in zip(vectors, lists, strict=True):
            listed = dict(ranked)
            known = {i: listed[key] for i, (key, _) in zip(ids, top, strict=True)
                     if key in listed}
            scores.append(known)
            if len(ranked) < depth:
                continue
            lacking = frozenset(i for i in ids if i not in known)
            if lacking:
                stages.append((known, _scoring(using, vector, lacking)))
        records: list[Record] = yield Fetch(tuple(ids), payload=True, dense=False)
        if stages:
            rescored: list[list[Scored]] = yield Batch(tuple(plan for _, plan in stages))
            for (known, _), found in zip(stages, rescored, strict=True):
                known.update((s.point_id, s.score) for s in found)
        payloads = {r.point_id: r.payload for r in records if r.payload is not None}
        dense, sparse = scores
        return [_hit(Scored(i, score, payloads[i]), dense=dense.get(i), sparse=sparse.get(i))
                for i, (_, score) in zip(ids, top, strict=True) if i in payloads]

    def similar(
        self, examples: Examples, limit: int = 10, filter: SearchFilter | None = None
    ) -> list[Hit]:
        """Papers like ``examples.positive`` and unlike ``examples.negative`` by their stored
        dense vectors; the examples themselves are never hits. One positive and no negative:
        its nearest neighbours (score: cosine). PaperNotFound names an example not indexed;
        a ``limit`` outside 1..MAX_COUNT is a ValueError (the engines' errors named none)."""
        return self.execute(self.similar_program(examples, limit, filter))

    def similar_program(
        self, examples: Examples, limit: int = 10, filter: SearchFilter | None = None
    ) -> Program[list[Hit]]:
        self._require_open()
        check_count("limit", limit)
        wanted = [point_id(pid) for pid in examples.ids]
        records: list[Record] = yield Fetch(tuple(wanted), payload=False, dense=True)
        vectors = {r.point_id: r.dense for r in records if r.dense is not None}
        for paper_id, pid in zip(examples.ids, wanted, strict=True):
            if pid not in vectors:
                raise PaperNotFound(paper_id)
        split = len(examples.positive)  # examples.ids: the positives, then the negatives
        positives = [vectors[pid] for pid in wanted[:split]]
        negatives = [vectors[pid] for pid in wanted[split:]]
        strategy = examples.strategy or self.settings.recommend_strategy
        if strategy == "auto":
            strategy = "best_score" if negatives else "average_vector"
        query: Nearest | Recommend
        if strategy == "average_vector":
            mean = np.mean(np.asarray(positives, dtype=np.float64), axis=0)
            combined = 2 * mean - (np.mean(np.asarray(negatives, dtype=np.float64), axis=0)
                                   if negatives else 0)
            if too_short(combined):
                raise InvalidExamples("the negative examples cancel the positive ones out: "
                                      "no direction is left to search (try strategy "
                                      "best_score)")
            query = Nearest(DENSE, tuple(float(x) for x in combined), limit)
        else:
            query = Recommend(DENSE, tuple(map(tuple, positives)), tuple(map(tuple, negatives)),
                              strategy, limit)
        plan = Plan(query, filter or SearchFilter(), exclude_ids=frozenset(wanted),
                    hnsw_ef=self.settings.hnsw_ef, oversampling=self._oversampling)
        results = yield from _engine_ranked(plan, limit)
        cosine = strategy == "average_vector"  # a cosine to one vector
        return [_hit(s, dense=s.score if cosine else None) for s in results]

    def execute(self, program: Program[T]) -> T:
        """Run an operation's program on this backend's own (blocking) primitives."""
        try:
            step = next(program)
            while True:
                step = program.send(self._do(step))
        except StopIteration as done:
            result: T = done.value
            return result

    def run_step(self, step: Step) -> Any:
        """One step of a program, for a caller that drives it (pipeline/index_access.py)."""
        return self._do(step)

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
        if not np.isfinite(vectors).all() or too_short(vectors).any():
            raise ValueError(f"dense vectors must be finite, with a norm of at least "
                             f"{MIN_NORM:.1e}")
        if len({p.id for p in papers}) != len(papers):
            raise ValueError("duplicate paper ids in one upsert")
        return vectors

    def _check_dim(self, request: SearchRequest) -> None:
        dim = self._require_open().dim
        if request.dense is not None and len(request.dense) != dim:
            raise ValueError(f"dense query has dim {len(request.dense)}, collection {dim}")

    def _plan(self, request: SearchRequest) -> Plan:
        self._check_dim(request)
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
            oversampling=self._oversampling,
        )

    def _with_components(
        self, request: SearchRequest, fused: list[Scored]
    ) -> Program[list[Hit]]:
        """Fused results carry only the fused score: score the hits again, per stage, exactly.

        Both stage queries are restricted to the fused hits' ids, so they are small and the
        scores are those of the whole query, not only of points inside a prefetch window.
        Fused results without payloads get them from the dense stage (every point has a
        dense vector).
        """
        if not fused:
            return []
        ids = frozenset(s.point_id for s in fused)
        payloads = any(s.payload is None for s in fused)
        vectors = ((DENSE, request.dense_vector()), (SPARSE, request.sparse_vector()))
        stages = [
            _scoring(using, vector, ids, with_payload=payloads and using == DENSE)
            for using, vector in vectors
        ]
        dense, sparse = yield Batch(tuple(stages))
        by_id = {s.point_id: s for s in dense}
        sparse_scores = {s.point_id: s.score for s in sparse}
        return [
            _hit(Scored(s.point_id, s.score, s.payload or by_id[s.point_id].payload),
                 dense=by_id[s.point_id].score, sparse=sparse_scores.get(s.point_id))
            for s in fused if s.point_id in by_id
        ]

    # -- engine primitives -------------------------------------------------------------------

    @abstractmethod
    def _open(self, identity: EmbedderIdentity, create: bool) -> EmbedderIdentity:
        """Open or create the collection; raise EmbedderMismatch if built by another one.
        Returns the identity the collection records (``identity`` where it recorded none)."""

    @abstractmethod
    def _do(self, step: Step) -> Any:
        """Carry out one engine step (index/plan.py) and return its result."""

    @abstractmethod
    def _close(self) -> None: ...


def _scoring(using: str, vector: tuple[float, ...] | SparseVector, ids: frozenset[str],
             with_payload: bool = False) -> Plan:
    """A query that scores exactly the points ``ids`` (every one that matches) for ``vector``
    on the named vector: a stage's scores for known hits, not a search."""
    return Plan(Nearest(using, vector, len(ids)), only_ids=ids, exact=True,
                with_payload=with_payload)


def _engine_ranked(plan: Plan, limit: int) -> Program[list[Scored]]:
    """The first ``limit`` of the engine's ranking for ``plan`` (whose query asks for
    ``limit``), equal scores ordered by point id: asked TIE_MARGIN times deeper (one round
    trip for most searches), then as ``_to_depth`` asks (a one-word BM25 query ties many
    papers)."""
    first = min(max(limit * TIE_MARGIN, limit + 1), MAX_COUNT)
    (top,) = yield from _to_depth((plan,), limit, keyed=False, first=first)
    return top


def _to_depth(plans: tuple[Plan, ...], depth: int, keyed: bool, first: int | None = None
              ) -> Program[list[list[Any]]]:
    """Each plan's first ``depth`` results (its query asks for ``depth``; ``keyed``: as
    Batch's keyed lists), equal scores ordered by point id (the engine orders them by its
    storage order, which depends on how the index was written, or, for its rrf and dbsf
    fusions, by chance: the same search gave other orders call after call): asked ``first``
    deep (default one deeper), and TIE_GROWTH times deeper again while a list's scores still
    tie at its end, up to TIE_DEPTH_MAX (past that the engine's order still decides which of
    them make the cut); the deeper asks without payloads, fetched for what made it. Cut at
    ``depth`` in the engine's order, more papers than that tied at the cut came in by storage
    order: two indexes of one corpus answered a search (a convex fusion's lists, an engine-
    ranked search) with other papers."""
    score = itemgetter(1) if keyed else attrgetter("score")
    ident = itemgetter(0) if keyed else attrgetter("point_id")
    asked = [min(first or depth + 1, MAX_COUNT)] * len(plans)
    asking = list(plans)
    lists: list[list[Any]] = [[] for _ in plans]
    todo = list(range(len(plans)))
    while todo:
        found: list[list[Any]] = yield Batch(tuple(
            replace(asking[i], query=replace(plans[i].query, limit=asked[i])) for i in todo
        ), keyed=keyed)
        again = []
        for i, got in zip(todo, found, strict=True):
            lists[i] = got
            if (len(got) == asked[i] > depth and asked[i] < TIE_DEPTH_MAX
                    and score(got[-1]) == score(got[depth - 1])):
                asked[i] = min(asked[i] * TIE_GROWTH, TIE_DEPTH_MAX)
                asking[i] = replace(plans[i], with_payload=False)
                again.append(i)
        todo = again
    tops = [sorted(got, key=lambda r: (-score(r), ident(r)))[:depth] for got in lists]
    unpaid = [i for i, plan in enumerate(plans) if plan.with_payload and asking[i] is not plan]
    if not unpaid:
        return tops
    records: list[Record] = yield Fetch(tuple(s.point_id for i in unpaid for s in tops[i]),
                                        payload=True, dense=False)
    payloads = {r.point_id: r.payload for r in records}
    for i in unpaid:  # a paper deleted meanwhile is dropped
        tops[i] = [replace(s, payload=payloads[s.point_id]) for s in tops[i]
                   if s.point_id in payloads]
    return tops


def _hit(scored: Scored, dense: float | None = None, sparse: float | None = None) -> Hit:
    return Hit(from_payload(scored.payload or {}), scored.score, dense, sparse)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

"""Server backend: a Qdrant server or cluster over gRPC (qdrant-client, ``prefer_grpc=True``).

Embedder identity lives in the collection's own metadata (``create_collection(metadata=...)``,
read back from ``get_collection().config.metadata``; qdrant-client 1.20 carries it over gRPC
and in local mode). Unlike a reserved point it cannot show up in searches, scrolls or counts;
unlike a sidecar it needs no shared filesystem and travels with snapshots and replicas. A
server that drops the field is detected on create and refused.

Writes are sent with ``wait=True``: acknowledged means applied and in the server's WAL. One
batch is one request; in a multi-shard collection each shard applies its part on its own.
The server optimizes in the background, so ``optimize()`` is a no-op. Vectors come from our
own BM25 encoder (index/sparse.py), never from server-side inference.

Retries: each request (query, retrieve, count, upsert, delete) that fails StoreUnavailable
(connection refused or reset, UNAVAILABLE, DEADLINE_EXCEEDED) is sent once more, after
``RETRY_PAUSE_S``, if at least a second (the smallest deadline Qdrant takes) of its
``index.timeout_s`` budget is left; the retry gets what is left, so one operation never takes
longer than ``timeout_s``: a server that stops answering costs one timeout, not two. (Except a
write on this blocking client: qdrant-client 1.20 gives an upsert or a delete its whole client
timeout whatever it is asked, so a retried one can take up to twice ``timeout_s``; the gateway's
asyncio client, index/server_async.py, bounds the retry itself.) Writes are
retried too: an upsert (``wait=True``) of fixed point ids and a delete by ids are idempotent,
so applying one twice leaves what applying it once does. (A write retried after a concurrent
write of the same paper could put the older version back: the window is the retry pause, and
resending by a client has the same race.) Opening the collection is not retried here: whoever
opens it opens again later (the next request, the next readiness check).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import grpc
from grpc.aio import AioRpcError
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    StoreError,
    StoreUnavailable,
)
from papersearch.index.plan import (
    Batch,
    Count,
    Fetch,
    Keyed,
    Nearest,
    Plan,
    PointData,
    Recommend,
    Record,
    Remove,
    Scan,
    ScanPage,
    Scored,
    Step,
    Write,
)
from papersearch.index.schema import (
    DENSE,
    PAYLOAD_INDEXES,
    SPARSE,
    CollectionSpec,
    EmbedderIdentity,
)
from papersearch.index.sparse import SparseVector
from papersearch.index.store import Store
from papersearch.logs import OnChange
from papersearch.settings import IndexSettings, without_userinfo

logger = logging.getLogger(__name__)
# A call's failed first try, logged when its reason changes and again once a call has
# answered at its first try: in an outage every call retried, each with its WARNING.
retrying = OnChange(logger, "qdrant unavailable, retrying once")

METADATA_KEY = "papersearch"
_INDEX_TYPES = {
    "datetime": models.PayloadSchemaType.DATETIME,
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
}
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
RETRY_PAUSE_S = 0.1


def connect(settings: IndexSettings) -> QdrantClient:
    """A gRPC client for ``settings.url``; connects lazily, on the first request."""
    return QdrantClient(**client_options(settings))


def client_options(settings: IndexSettings) -> dict[str, Any]:
    """Keyword arguments of both qdrant-client clients (blocking and asyncio) for ``settings``."""
    return {
        "url": settings.url,
        "grpc_port": settings.grpc_port,
        "prefer_grpc": True,
        "api_key": settings.api_key.get_secret_value() if settings.api_key else None,
        "timeout": settings.timeout_s,
        "check_compatibility": False,
    }


class ServerStore(Store):
    """A collection on a Qdrant server; pass ``client`` to use another (e.g. local-mode) client."""

    backend = "server"

    def __init__(self, settings: IndexSettings, client: QdrantClient | None = None) -> None:
        super().__init__(settings)
        self.client = client if client is not None else connect(settings)
        self.name = settings.collection

    def describe(self) -> str:
        return f"{without_userinfo(self.settings.url or 'qdrant')}/{self.name}"

    # -- engine primitives -------------------------------------------------------------------

    def _open(self, identity: EmbedderIdentity, create: bool) -> EmbedderIdentity:
        where = f"collection {self.describe()}"
        with errors("open"):
            if not self.client.collection_exists(self.name):
                if not create:
                    raise CollectionMissing(
                        f"{where} does not exist: papersearch ingest creates it")
                self._create(CollectionSpec.of(self.settings, identity.dim), identity)
            info = self.client.get_collection(self.name)
            stored = _identity(info.config.metadata)
            if stored is None:
                if self._count():
                    raise EmbedderMismatch(f"{where} has points but no embedder identity")
                self._set_identity(identity)
            else:
                identity.require(stored, where)
            vectors = info.config.params.vectors
            dense = vectors.get(DENSE) if isinstance(vectors, Mapping) else None
            size = dense.size if dense is not None else None
            if size != identity.dim:
                raise EmbedderMismatch(f"{where} holds dim {size} vectors, embedder {identity.dim}")
            for name, kind in PAYLOAD_INDEXES.items():
                if name not in info.payload_schema:
                    self.client.create_payload_index(
                        self.name, name, field_schema=_INDEX_TYPES[kind], wait=True
                    )
        return identity if stored is None else stored

    def _do(self, step: Step) -> Any:
        """Sent once more on StoreUnavailable while a whole second of the ``timeout_s`` budget
        is left (the retry gets what is left)."""
        call = call_for(step, self.name, self.settings.write_ordering)
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            with errors(call.operation):
                answer = call.result(call.send(self.client, None))
        except StoreUnavailable as error:
            left = retry_budget(deadline, self.name, error)
            time.sleep(RETRY_PAUSE_S)
            with errors(call.operation):
                return call.result(call.send(self.client, left))
        retrying.clear()
        return answer

    def _count(self) -> int:
        count: int = self._do(Count())
        return count

    def _close(self) -> None:
        self.client.close()

    # -- helpers -----------------------------------------------------------------------------

    def _create(self, spec: CollectionSpec, identity: EmbedderIdentity) -> None:
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
            if spec.quantization == "int8"
            else None
        )
        try:
            self.client.create_collection(
                self.name,
                vectors_config={
                    DENSE: models.VectorParams(
                        size=spec.dim,
                        distance=models.Distance.COSINE,
                        on_disk=spec.on_disk_vectors,
                        hnsw_config=models.HnswConfigDiff(
                            m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct
                        ),
                        quantization_config=quantization,
                    )
                },
                sparse_vectors_config={
                    SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                on_disk_payload=spec.on_disk_payload,
                shard_number=self.settings.shard_number,
                replication_factor=self.settings.replication_factor,
                metadata={METADATA_KEY: identity.to_json()},
            )
        except (grpc.RpcError, UnexpectedResponse, ValueError):
            # Another replica may have created it first; then verify that one instead.
            if not self.client.collection_exists(self.name):
                raise
            logger.info("collection created concurrently", extra={"collection": self.name})
            return
        logger.info(
            "collection created",
            extra={"collection": self.name, "dim": spec.dim, "shards": self.settings.shard_number},
        )

    def _set_identity(self, identity: EmbedderIdentity) -> None:
        self.client.update_collection(self.name, metadata={METADATA_KEY: identity.to_json()})
        if _identity(self.client.get_collection(self.name).config.metadata) != identity:
            raise StoreError(
                f"Qdrant at {self.describe()} does not keep collection metadata; "
                "a server version with collection metadata support is needed"
            )


@dataclass(frozen=True, slots=True)
class Call:
    """One engine step as a qdrant-client request: ``send(client, timeout)`` works with the
    blocking client and the asyncio one alike (same methods; the latter's returns an awaitable),
    ``result`` turns the response into the step's result."""

    operation: str
    send: Callable[[Any, int | None], Any]
    result: Callable[[Any], Any] = lambda response: response


def call_for(step: Step, collection: str, ordering: str) -> Call:
    """The request that carries out ``step`` on ``collection`` (writes wait until applied, in
    Qdrant's write ``ordering``)."""
    match step:
        case Batch(plans, keyed):
            requests = [_request(p) for p in plans]
            return Call("query", lambda c, t: c.query_batch_points(
                collection, requests=requests, timeout=t), _keyed if keyed else _ranked)
        case Fetch(point_ids, payload, dense, sparse):
            names = [name for name, wanted in ((DENSE, dense), (SPARSE, sparse)) if wanted]
            return Call("retrieve", lambda c, t: c.retrieve(
                collection, ids=list(point_ids), with_payload=payload,
                with_vectors=names or False, timeout=t),
                lambda records: _records(records, dense, sparse))
        case Scan(key, since, limit, offset):
            condition = models.FieldCondition(key=key, range=models.Range(gte=since))
            scan = None if since is None else models.Filter(must=[condition])
            return Call("scroll", lambda c, t: c.scroll(
                collection, scroll_filter=scan, limit=limit,
                offset=offset, with_payload=[key], with_vectors=False, timeout=t), _page)
        case Write(points):
            batch = [models.PointStruct(id=p.point_id, vector=_vectors(p), payload=p.payload)
                     for p in points]
            return Call("upsert", lambda c, t: c.upsert(
                collection, points=batch, wait=True, ordering=models.WriteOrdering(ordering),
                timeout=t), _nothing)
        case Remove(point_ids):
            selector = models.PointIdsList(points=list(point_ids))
            return Call("delete", lambda c, t: c.delete(
                collection, points_selector=selector, wait=True,
                ordering=models.WriteOrdering(ordering), timeout=t), _nothing)
        case Count():
            return Call("count", lambda c, t: c.count(collection, exact=True, timeout=t),
                        lambda counted: counted.count)


def retry_budget(deadline: float, collection: str, error: StoreUnavailable) -> int:
    """Whole seconds a call's one retry gets; re-raises ``error`` if less than one
    would be left after the pause."""
    left = int(deadline - time.monotonic() - RETRY_PAUSE_S)
    if left < 1:
        raise error
    retrying.said(f"{error} (collection {collection})")
    return left


def _identity(metadata: Mapping[str, Any] | None) -> EmbedderIdentity | None:
    entry = (metadata or {}).get(METADATA_KEY)
    try:
        return EmbedderIdentity.from_json(entry) if entry else None
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"unreadable embedder identity in the collection's metadata "
                         f"({METADATA_KEY}): {exc!r}") from exc


@contextmanager
def errors(operation: str) -> Iterator[None]:
    """Unreachable server: StoreUnavailable; the collection not found (deleted since it was
    opened): CollectionMissing; anything else the server refuses: StoreError."""
    try:
        yield
    except StoreError:
        raise
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call | AioRpcError) else None
        if code in _UNAVAILABLE:
            raise StoreUnavailable(f"qdrant {operation}: {code}: {exc.details()}") from exc
        if code == grpc.StatusCode.NOT_FOUND:
            raise CollectionMissing(f"qdrant {operation}: {exc.details()}") from exc
        raise StoreError(f"qdrant {operation} failed: {exc}") from exc
    except ResponseHandlingException as exc:
        raise StoreUnavailable(f"qdrant {operation}: {exc}") from exc
    except UnexpectedResponse as exc:
        if exc.status_code == HTTPStatus.NOT_FOUND:
            raise CollectionMissing(f"qdrant {operation}: {exc}") from exc
        raise StoreError(f"qdrant {operation} failed: {exc}") from exc


def _records(records: Sequence[models.Record], dense: bool, sparse: bool = False
             ) -> list[Record]:
    return [
        Record(str(r.id), r.payload, _dense_of(r.vector) if dense else None,
               _sparse_of(r.vector) if sparse else None) for r in records
    ]


def _sparse_of(vector: Any) -> SparseVector | None:
    stored = vector.get(SPARSE) if isinstance(vector, Mapping) else None
    return None if stored is None else SparseVector.of(stored)


def _page(response: tuple[Sequence[models.Record], Any]) -> ScanPage:
    records, next_offset = response
    return ScanPage(_records(records, dense=False),
                    None if next_offset is None else str(next_offset))


def _nothing(_: Any) -> None:
    return None


def _ranked(responses: Sequence[models.QueryResponse]) -> list[list[Scored]]:
    return [[Scored(str(p.id), p.score, p.payload) for p in r.points] for r in responses]


def _keyed(responses: Sequence[models.QueryResponse]) -> list[list[Keyed]]:
    return [[(p.id, p.score) for p in r.points] for r in responses]


def _vectors(point: PointData) -> dict[str, Any]:
    vectors: dict[str, Any] = {DENSE: point.dense}
    if len(point.sparse):
        vectors[SPARSE] = _sparse(point.sparse)
    return vectors


def _dense_of(vector: Any) -> list[float] | None:
    return vector.get(DENSE) if isinstance(vector, Mapping) else None


def _sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _query(nearest: Nearest) -> list[float] | models.SparseVector:
    v = nearest.vector
    return _sparse(v) if isinstance(v, SparseVector) else list(v)


def _filter(plan: Plan) -> models.Filter | None:
    f = plan.filter
    must: list[models.Condition] = []
    bounds = f.published_range()
    if bounds is not None:
        gte, lt = bounds
        must.append(
            models.FieldCondition(key="published", range=models.DatetimeRange(gte=gte, lt=lt))
        )
    for key, values in (("categories", f.categories), ("authors", f.authors)):
        if values:
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(values))))
    if plan.only_ids is not None:
        must.append(models.HasIdCondition(has_id=sorted(plan.only_ids)))
    must_not: list[models.Condition] | None = (
        [models.HasIdCondition(has_id=sorted(plan.exclude_ids))] if plan.exclude_ids else None
    )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not)


def _params(plan: Plan) -> models.SearchParams:
    # rescored always, as the embedded engine's (edge.py _params)
    quantization = (models.QuantizationSearchParams(ignore=True) if plan.exact
                    else models.QuantizationSearchParams(rescore=True,
                                                         oversampling=plan.oversampling))
    return models.SearchParams(hnsw_ef=plan.hnsw_ef, exact=plan.exact, quantization=quantization)


_STRATEGIES = {"best_score": models.RecommendStrategy.BEST_SCORE,
               "sum_scores": models.RecommendStrategy.SUM_SCORES}


def _request(plan: Plan) -> models.QueryRequest:
    flt, params = _filter(plan), _params(plan)
    query = plan.query
    if isinstance(query, Recommend):
        examples = models.RecommendInput(
            positive=[list(v) for v in query.positives],
            negative=[list(v) for v in query.negatives], strategy=_STRATEGIES[query.strategy])
        return models.QueryRequest(query=models.RecommendQuery(recommend=examples),
                                   using=query.using, limit=query.limit, filter=flt,
                                   params=params, with_payload=plan.with_payload)
    if isinstance(query, Nearest):
        return models.QueryRequest(
            query=_query(query),
            using=query.using,
            limit=query.limit,
            filter=flt,
            params=params,
            with_payload=plan.with_payload,
        )
    fusion: models.Query = (
        models.RrfQuery(rrf=models.Rrf(k=query.rrf_k))
        if query.method == "rrf"
        else models.FusionQuery(fusion=models.Fusion.DBSF)
    )
    return models.QueryRequest(
        prefetch=[
            models.Prefetch(
                query=_query(p), using=p.using, limit=p.limit, filter=flt, params=params
            )
            for p in query.prefetch
        ],
        query=fusion,
        limit=query.limit,
        filter=flt,
        with_payload=plan.with_payload,
    )

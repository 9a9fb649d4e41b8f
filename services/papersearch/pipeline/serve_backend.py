"""The serving pipeline's Backend: the models over Ray Serve deployment handles, the index in
the gateway's own process (pipeline/index_access.py, one per collection: pipeline/collections.py).

Query encoding goes through a Coalescer: concurrent searches share calls. A cancelled await
(client deadline) cancels the downstream request; Serve's back-pressure becomes the gateway's
Overloaded, and "no replica" or a replica lost mid-call (killed, crashed, its node gone)
NotReady: UNAVAILABLE, never INTERNAL. Reads are idempotent, so a read whose replica was lost
is sent once more, within the caller's deadline (Serve routes it to a live replica, or holds it
until one is back); writes are not repeated here: the client resends them (UpsertPapers reports
what was committed).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
from ray.exceptions import LocalRayletDiedError, NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from papersearch.coalesce import Coalescer
from papersearch.corpus.paper import Paper
from papersearch.errors import NotReady, Overloaded
from papersearch.index.errors import EmbedderMismatch
from papersearch.index.query import Examples, Hit, Mode, SearchFilter
from papersearch.index.store import Indexed
from papersearch.logs import OnChange
from papersearch.models.manifest import ModelRef
from papersearch.pipeline.collections import Bound, Collections
from papersearch.pipeline.migration import Migrator
from papersearch.retriever.retriever import Retrieved
from papersearch.settings import Settings
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

# A replica (actor) died or cannot be reached, mid-call or before it: ActorDiedError and
# ActorUnavailableError are RayActorErrors.
LOST = (RayActorError, ReplicaUnavailableError, WorkerCrashedError, NodeDiedError,
        LocalRayletDiedError)


# What a handle method's .remote() returns: Ray types it as either; the generator only comes
# from a handle with options(stream=True), which none here is.
Sent = DeploymentResponse | DeploymentResponseGenerator


class ReplicaLost(NotReady):
    """The replica serving a call died or became unreachable mid-call: a read may be sent
    again (Serve routes it to a live replica); a deployment with no replica at all, not."""


# Why a deployment has no replica, logged per deployment when that changes: every health poll
# and every call met it, each a WARNING (17,280 lines a day from the poll alone). A call that
# then succeeds ends it, so that the deployment's next failure is logged again.
_unavailable: dict[str, OnChange] = {}


async def call(deployment: str, sent: Sent) -> Any:
    """Await one handle call to ``deployment`` (its name, for the log), Serve's errors as
    the gateway's."""
    response = cast(DeploymentResponse, sent)  # no stream=True handle: see Sent
    try:
        answer = await response
    except asyncio.CancelledError:
        response.cancel()
        raise
    except BackPressureError as error:
        raise Overloaded(f"a model deployment's queue is full ({error})",
                         "max_queued_requests") from None
    except DeploymentUnavailableError as error:  # its str() is the deployment's id alone
        if deployment not in _unavailable:
            _unavailable[deployment] = OnChange(log, "deployment unavailable")
        _unavailable[deployment].said(error.message)
        raise NotReady("a model deployment has no replica running (it failed to deploy)") \
            from None
    except LOST as error:  # a write is not sent again: the gateway's log says why it failed
        log.warning("replica lost", extra={"deployment": deployment,
                                           "reason": type(error).__name__})
        raise ReplicaLost(f"replica lost mid-call ({type(error).__name__})") from None
    said = _unavailable.get(deployment)
    if said is not None and said.clear():
        log.info("deployment available", extra={"deployment": deployment})
    return answer


async def read(deployment: str, send: Callable[[], Sent]) -> Any:
    """An idempotent read: sent once more if its replica was lost (see the module's note); a
    deployment with no replica would refuse it again. The caller's deadline bounds both tries
    (a cancellation cancels the one in flight)."""
    try:
        return await call(deployment, send())
    except ReplicaLost as error:
        log.debug("read retried", extra={"deployment": deployment, "reason": str(error)})
        metrics().read_retried(deployment)
        return await call(deployment, send())


class HandleBackend:
    """Models through Serve handles (QueryEncoder, Reranker); the index in this process. Each
    request works on one view of the collections (``pinned``): see pipeline/collections.py."""

    has_reranker = True

    def __init__(
        self,
        encoder: DeploymentHandle,
        reranker: DeploymentHandle,
        collections: Collections,
        settings: Settings,
    ) -> None:
        self.encoder = encoder
        self.reranker = reranker
        self.collections = collections
        self.settings = settings
        self.migrator = Migrator(collections, self.encode_documents_by,
                                 settings.serve.upsert_batch_size)
        self._coalescers: dict[ModelRef, Coalescer[str, np.ndarray]] = {}
        self._pin = False
        self._bound: Bound | None = None

    def pinned(self) -> HandleBackend:
        """This backend for one request: the live view it takes at its first step is the one
        all its steps use (a shallow copy: models, coalescers and collections are shared)."""
        pinned = copy.copy(self)
        pinned._pin, pinned._bound = True, None
        return pinned

    async def bound(self) -> Bound:
        """The pinned view, or (unpinned: single-step calls) the live view now."""
        if self._bound is not None:
            return self._bound
        bound = await self.collections.live()
        await self.migrator.resume()
        if self._pin:
            self._bound = bound
        return bound

    async def encode_query_by(self, embedder: ModelRef, text: str) -> np.ndarray:
        coalescer = self._coalescers.get(embedder)
        if len(self._coalescers) > (coalescer is not None):
            self._forget_idle_coalescers(embedder)
        if coalescer is None:
            serve = self.settings.serve

            async def send(texts: list[str]) -> list[np.ndarray]:
                return list(await read("QueryEncoder",
                                       lambda: self.encoder.encode.remote(texts, str(embedder))))

            coalescer = self._coalescers[embedder] = Coalescer(
                "QueryEncoder", send, max_batch=serve.coalesce_max_batch,
                max_in_flight=serve.coalesce_in_flight, max_pending=serve.coalesce_max_pending)
        return await coalescer.submit(text)

    def _forget_idle_coalescers(self, used: ModelRef) -> None:
        """Other embedders' coalescers (a migration's swap left the old one) go once nothing
        is queued or in flight on them: kept, each migration left one behind for good. A call
        that needs one again makes it again."""
        for embedder, coalescer in list(self._coalescers.items()):
            if embedder != used and not coalescer.in_flight and not coalescer.pending:
                del self._coalescers[embedder]

    async def encode_documents_by(self, embedder: ModelRef, texts: Sequence[str]) -> np.ndarray:
        return await call("QueryEncoder",
                          self.encoder.encode_documents.remote(list(texts), str(embedder)))

    async def rerank(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return await call("Reranker", self.reranker.score.remote((query, list(passages))))

    async def embedder_sha(self) -> str:
        return (await self.bound()).view.sha256

    async def encode_query(self, text: str) -> np.ndarray:
        return await self.encode_query_by((await self.bound()).view.embedder, text)

    async def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return await self.encode_documents_by((await self.bound()).view.embedder, texts)

    async def retrieve(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter,
        explain: bool = False, feedback: bool | None = None,
    ) -> Retrieved:
        return await (await self.bound()).index.retrieve(text, vector, mode, limit, flt,
                                                         explain, feedback)

    async def similar(self, examples: Examples, limit: int, flt: SearchFilter) -> list[Hit]:
        return await (await self.bound()).index.similar(examples, limit, flt)

    async def get(self, paper_id: str) -> Paper:
        return await (await self.bound()).index.get(paper_id)

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        bound, mirror = await self.bound(), self.migrator.mirror
        if mirror is None:
            return await bound.index.upsert(papers, dense)
        return await mirror.upsert(bound, papers, dense)

    async def delete(self, paper_ids: Sequence[str]) -> int:
        bound, mirror = await self.bound(), self.migrator.mirror
        if mirror is None:
            return await bound.index.delete(paper_ids)
        return await mirror.delete(bound, paper_ids)

    async def indexed_since(self, since_ms: int, known: Mapping[str, int] | None
                            ) -> Indexed:
        return await (await self.bound()).index.indexed_since(since_ms, known)

    def swapped_at_ms(self) -> int | None:
        pointer = self.collections.pointer
        return None if pointer is None else pointer.swapped_at_ms

    async def ready(self) -> bool:
        """Models loaded, index reachable, the collection there and built by the live
        embedder, which the QueryEncoder runs (CollectionMissing, StoreUnavailable or
        EmbedderMismatch otherwise)."""
        bound = await self.bound()
        dim, sha = await call("QueryEncoder",
                              self.encoder.identity.remote(str(bound.view.embedder)))
        if (dim, sha) != (bound.view.dim, bound.view.sha256):
            raise EmbedderMismatch(
                f"the QueryEncoder's {bound.view.embedder} is {sha[:12]} (dim {dim}), the model "
                f"repository's {bound.view.sha256[:12]} (dim {bound.view.dim})")
        await bound.index.reachable()
        return True

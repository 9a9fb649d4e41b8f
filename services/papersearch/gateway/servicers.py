"""SearchService and IndexService over the pipeline's Backend, with deadlines and status codes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np

from papersearch.api import convert
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.corpus.paper import Paper
from papersearch.errors import NotReady
from papersearch.gateway.errors import ServerDeadline, to_status
from papersearch.gateway.watch import DRAINING, Match, Watch, WatchHub
from papersearch.index.query import Hit
from papersearch.pipeline.backend import Backend
from papersearch.pipeline.search import SearchPipeline
from papersearch.settings import ServeSettings, Settings
from papersearch.tasks import forget
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVER_LIMIT = "serve.index_call_timeout_s"  # an index call's own time, when the client's is longer
# Metadata of a call whose deadline the HTTP front set to serve.default_deadline_s plus
# DEFAULT_DEADLINE_MARGIN_S (its caller gave no x-timeout-ms): the gateway's own limit ends it
# the margin earlier, counted from the HTTP request's arrival (queueing for the connection
# included), logged and named as the server's; at the same instant the front's gRPC channel
# won the race with a bare "Deadline Exceeded". Taken only on the front's own unix socket: a
# client's deadline must not read (and be logged) as the server's
DEFAULT_DEADLINE_KEY = "papersearch-default-deadline"
DEFAULT_DEADLINE_MARGIN_S = 0.25
# DeletePapers' ids past this many are read (stripped, normalised, checked) in a worker
# thread: many ids built to be slow to normalise held the event loop (README: Results,
# Figures behind the limits)
IDS_INLINE = 256


def call_time(context: grpc.aio.ServicerContext, serve: ServeSettings
              ) -> tuple[float, str | None]:
    """The call's time: the client's deadline (``serve.default_deadline_s`` if it set none),
    at most ``serve.max_deadline_s``; with the setting that set it where the server did."""
    remaining = context.time_remaining()
    if remaining is None:
        return serve.default_deadline_s, "serve.default_deadline_s"
    if context.peer().startswith("unix:") and any(
            key == DEFAULT_DEADLINE_KEY for key, _ in context.invocation_metadata() or ()):
        return (max(0.0, min(remaining - DEFAULT_DEADLINE_MARGIN_S, serve.default_deadline_s)),
                "serve.default_deadline_s")
    if remaining > serve.max_deadline_s:
        return serve.max_deadline_s, "serve.max_deadline_s"
    return remaining, None


async def within_deadline(
    work: Awaitable[T], context: grpc.aio.ServicerContext, serve: ServeSettings,
    time_s: tuple[float, str | None] | None = None,
) -> T:
    """Await ``work`` for the call's time (``time_s`` if given, else ``call_time``'s); on
    expiry it is cancelled downstream. (In this task: ``asyncio.wait_for`` would start another
    one, a loop turn more per call.) A time the server set that runs out is logged: the
    service was too slow, where a client's own deadline is the client's business (nothing was
    logged either way), and the client is told which setting cut its call (it had read "deadline
    exceeded" after a second with a deadline of a minute)."""
    limit, setting = call_time(context, serve) if time_s is None else time_s
    try:
        async with asyncio.timeout(limit) as scope:
            return await work
    except TimeoutError as error:
        if setting is None or not scope.expired():  # the client's, or the work's own timeout
            raise
        log.warning("call deadline", extra={"limit_s": round(limit, 3), "setting": setting})
        # the setting's value: what was left of it as the call came (an HTTP request's, after
        # its body) had read "0 s"
        raise ServerDeadline(getattr(serve, setting.removeprefix("serve."), limit),
                             setting) from error


async def _fail(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    code, message = to_status(error)
    await context.abort(code, message)


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, backend: Backend, settings: Settings,
                 watches: WatchHub | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.pipeline = SearchPipeline(backend, settings.search, settings.serve.rerank_timeout_s)
        self.watches = watches or WatchHub(settings.serve.watch_max_watches,
                                           settings.serve.watch_queue)

    async def Search(  # noqa: N802 (gRPC method name)
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        try:
            query = convert.search_query_from_proto(request, self.settings.search)
            limit = call_time(context, self.settings.serve)
            result = await within_deadline(
                self.pipeline.search(query, time.monotonic() + limit[0]), context,
                self.settings.serve, limit)
        except Exception as error:
            await _fail(context, error)
        response = await self._within_send_limit(convert.search_response_to_proto(result),
                                                  context)
        # answered; labelled by the ladder's window (a few values), not the count reranked
        metrics().search(result.reranked, result.rerank_window, result.feedback)
        return response

    async def SimilarPapers(  # noqa: N802
        self, request: pb.SimilarPapersRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        try:
            query = convert.similar_query_from_proto(request, self.settings.search)
            hits = await within_deadline(
                self.backend.similar(query.examples, query.top_k, query.filter), context,
                self.settings.serve,
            )
        except Exception as error:
            await _fail(context, error)
        return await self._within_send_limit(pb.SearchResponse(
            hits=[pb.Hit(paper=convert.paper_to_proto(h.paper), score=h.score,
                         stages=pb.StageScores(dense=h.dense_score)) for h in hits],
            reranked=False,
        ), context)

    async def _within_send_limit(self, response: pb.SearchResponse,
                                 context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        """``response``, or OUT_OF_RANGE where it is past serve.max_send_bytes: gRPC itself
        would fail it with RESOURCE_EXHAUSTED, which clients retry, and every retry fails the
        same way (top_k long papers: 100 of the longest allowed are ~21 MB)."""
        size, limit = response.ByteSize(), self.settings.serve.max_send_bytes
        if size > limit:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"the {len(response.hits)} results are {size:,} bytes, past the server's "
                f"response limit of {limit:,} (serve.max_send_bytes): ask for fewer (top_k)")
        return response

    async def GetPaper(  # noqa: N802
        self, request: pb.GetPaperRequest, context: grpc.aio.ServicerContext
    ) -> pb.Paper:
        try:
            paper_id = convert.paper_id_from_proto(request.paper_id)
            paper = await within_deadline(
                self.backend.get(paper_id), context, self.settings.serve
            )
        except Exception as error:
            await _fail(context, error)
        return convert.paper_to_proto(paper)

    async def WatchSearch(  # noqa: N802
        self, request: pb.WatchSearchRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """A saved search (gateway/watch.py): the replay, the caught_up event, then each match
        as this gateway indexes it, until the client leaves, its deadline, a drain or
        overflow. Written with ``context.write`` (a coroutine, not a generator), so the
        interceptors wrap it like the unary methods."""
        serve = self.settings.serve
        try:
            query = convert.watch_query_from_proto(request, self.settings.search,
                                                   serve.watch_min_relevance)
            await self._admit(context)
            backend = self.backend.pinned()
            vector = await within_deadline(backend.encode_query(query.text), context, serve)
            embedder = await within_deadline(backend.embedder_sha(), context, serve)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _fail(context, error)
        threshold = serve.watch_min_relevance if query.min_relevance is None \
            else query.min_relevance
        watch = self.watches.add(vector, threshold, query.filter, embedder)
        if watch is None:  # the limit or a drain was reached while the query was encoded
            await self._admit(context)
            return
        expiry: asyncio.TimerHandle | None = None
        try:
            replayed: dict[str, Paper] = {}  # as sent
            if query.replay_since is not None:
                try:
                    hits = await within_deadline(
                        self._replay(backend, query, vector, threshold), context, serve)
                except Exception as error:
                    await _fail(context, error)
                for hit in hits:
                    replayed[hit.paper.id] = hit.paper
                    await _send(context, watch, pb.WatchEvent(
                        hit=_watch_hit(hit.paper, hit.dense_score), replayed=True))
            await _send(context, watch, pb.WatchEvent(caught_up=True))
            # The feed may bring a replayed paper again: a copy queued while the replay ran
            # (of those only the last counts: the replay may have read an earlier or a later
            # one), or the write the replay read, found by a poll after it (another writer's,
            # written since this gateway's last poll). A copy as the replay sent it is not sent
            # again if the feed queued it within serve.watch_lookback_s of caught_up, within
            # which it finds any write that came before the replay (however slowly the watcher
            # then reads); a changed one is, and ends the paper's replayed copy.
            during_replay = len(watch.pending)
            last = {m.paper.id: m for m in itertools.islice(watch.pending, during_replay)}
            window: list[int] = []  # how many matches were queued when the window ran out
            expiry = asyncio.get_running_loop().call_later(
                serve.watch_lookback_s, lambda: window.append(watch.offered))
            while watch.ended is None:
                while watch.pending and watch.ended is None:
                    index = watch.offered - len(watch.pending)  # queued as the watch's nth
                    match: Match = watch.pending.popleft()
                    if replayed and window and index >= window[0]:
                        replayed.clear()  # queued after the window: sent as any paper is
                    sent = replayed.get(match.paper.id)
                    if sent is not None:
                        if match.paper == sent or (index < during_replay
                                                   and match is not last[match.paper.id]):
                            continue
                        del replayed[match.paper.id]
                    await _send(context, watch, pb.WatchEvent(hit=_watch_hit(match.paper,
                                                                             match.cosine)))
                watch.wake.clear()
                if watch.ended is None:
                    await watch.wake.wait()
        except _WatchEnded:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            self.watches.remove(watch)
        # Not context.abort: it sends the status at once, behind any event the client has
        # not taken; set here, it goes when the call ends, and the handler is done now.
        assert watch.ended is not None
        context.set_code(watch.ended[0])
        context.set_details(watch.ended[1])

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        """Refuse a new watch past the gateway's limit, or while it drains."""
        if self.watches.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        if self.watches.open >= self.watches.max_watches:
            metrics().refused("serve.watch_max_watches")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.watches.open} watches are open on this gateway, its limit "
                f"(serve.watch_max_watches); retry WatchSearch later or elsewhere")

    async def _replay(self, backend: Backend, query: convert.WatchQuery, vector: np.ndarray,
                      threshold: float) -> list[Hit]:
        """The best matches already indexed, published on or after replay_since (and within
        the filter): one dense search, cut at the threshold."""
        since = query.replay_since
        assert since is not None
        flt = query.filter
        start = max(since, flt.published_from) if flt.published_from else since
        if flt.published_to is not None and start > flt.published_to:
            return []
        found = await backend.retrieve(query.text, vector, "dense", query.replay_limit,
                                       dataclasses.replace(flt, published_from=start))
        return [h for h in found.hits if h.dense_score is not None and h.dense_score >= threshold]


class _WatchEnded(Exception):
    """The watch ended while one of its events waited to be written."""


async def _send(context: grpc.aio.ServicerContext, watch: Watch, event: pb.WatchEvent) -> None:
    """Write ``event``, unless the watch ends first (a drain, overflow, a migration): a
    watcher that stopped reading holds a write forever (flow control), and with it a drain and
    a place among the gateway's watches. Then the write is dropped and _WatchEnded raised."""
    write = asyncio.ensure_future(context.write(event))
    over = asyncio.ensure_future(watch.over.wait())
    try:
        await asyncio.wait((write, over), return_when=asyncio.FIRST_COMPLETED)
    finally:
        over.cancel()
        forget(write)  # this call cancelled as its write failed: nobody reads the failure
        if not write.done():  # the watch ended, or this call was cancelled
            write.cancel()
    if not write.done():
        raise _WatchEnded
    write.result()  # a failed write fails the call


def _watch_hit(paper: Paper, cosine: float | None) -> pb.Hit:
    return pb.Hit(paper=convert.paper_to_proto(paper), score=cosine or 0.0,
                  stages=pb.StageScores(dense=cosine))


class ErrorLines:
    """UpsertSummary.errors: the first ``limit`` lines are kept, the rest only counted, so a
    stream of invalid papers cannot grow the gateway's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self.count = 0

    def append(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < self.limit:
            self.lines.append(line)


@dataclass(slots=True)
class UpsertProgress:
    """How far an UpsertPapers stream got. Batches are written in stream order, so what is
    committed is always a prefix of the stream; a failure reports it to the client."""

    received: int = 0  # messages read from the stream
    committed: int = 0  # papers written in batches the index acknowledged
    settled: int = 0  # the stream's first ``settled`` messages are done: written or skipped

    def trailer(self) -> tuple[tuple[str, str], ...]:
        return ((convert.COMMITTED_KEY, str(self.committed)),
                (convert.COMMITTED_MESSAGES_KEY, str(self.settled)))

    def describe(self) -> str:
        return (f"; committed before the failure: {self.committed} papers, the stream's first "
                f"{self.settled} messages; resend from message {self.settled + 1} (resending "
                f"is idempotent)")


class IndexServicer(pb_grpc.IndexServiceServicer):
    """Writes, within the gateway's limits: at most ``serve.max_index_calls`` at once (past it
    RESOURCE_EXHAUSTED at once, not queued) and ``serve.index_call_timeout_s`` each. A failed
    UpsertPapers says what it committed: trailing metadata and status message (the proto).
    Once the gateway drains (``closing``), an UpsertPapers stream ends after the batch it is
    writing, UNAVAILABLE with what it committed: the drain's end cut it with neither."""

    def __init__(self, backend: Backend, settings: Settings,
                 watches: WatchHub | None = None, closing: asyncio.Event | None = None,
                 ) -> None:
        self.backend = backend
        self.batch_size = settings.serve.upsert_batch_size
        self.serve = settings.serve
        self.calls = 0
        self.watches = watches  # nudged after every batch written (WatchSearch)
        self.closing = closing or asyncio.Event()

    @contextlib.asynccontextmanager
    async def _limited(
        self, context: grpc.aio.ServicerContext, method: str,
        progress: UpsertProgress | None = None,
    ) -> AsyncIterator[None]:
        """One IndexService call: a slot, the server-side deadline, errors -> status codes."""
        if self.calls >= self.serve.max_index_calls:
            metrics().refused("serve.max_index_calls")
            await self._abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.calls} index writes are in progress on this gateway, its limit "
                f"(serve.max_index_calls); retry {method} later", progress,
            )
        self.calls += 1
        limit_s, whose = self.serve.index_call_timeout_s, SERVER_LIMIT
        client_s = context.time_remaining()
        if client_s is not None and client_s < limit_s:
            # ended a little before the client's deadline, so that the status and what was
            # committed reach it before its own library ends the call without them
            limit_s, whose = client_s - min(1.0, 0.1 * client_s), "the client's, less a margin"
        scope = asyncio.timeout(max(0.0, limit_s))
        try:
            async with scope:
                yield
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            if isinstance(error, TimeoutError) and scope.expired():
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                message = f"{method} ran past its deadline ({limit_s:.3g} s, {whose})"
                # the server's own limit is the service's slowness; the client's deadline is
                # the client's (a tight one alone raised the WARNING rate)
                level = logging.WARNING if whose == SERVER_LIMIT else logging.DEBUG
                log.log(level, "index call deadline", extra={
                    "detail": message + (progress.describe() if progress else "")})
            else:
                code, message = to_status(error)
            await self._abort(context, code, message, progress)
        finally:
            self.calls -= 1

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                     progress: UpsertProgress | None) -> None:
        """End the call (raises); an UpsertPapers stream's also says what it committed."""
        if progress is None:
            await context.abort(code, message)
        else:
            await context.abort(code, message + progress.describe(),
                                trailing_metadata=progress.trailer())

    async def UpsertPapers(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.Paper], context: grpc.aio.ServicerContext
    ) -> pb.UpsertSummary:
        progress = UpsertProgress()
        errors = ErrorLines(self.serve.upsert_max_errors)
        batch: list[Paper] = []
        async with self._limited(context, "UpsertPapers", progress):
            async for message in self._until_closing(request_iterator):
                progress.received += 1
                try:
                    batch.append(convert.paper_from_proto(message))
                except ValueError as error:
                    given = convert.quoted(message.paper_id) if message.paper_id else "no id"
                    errors.append(f"paper {progress.received} ({given}): {error}")
                if len(batch) >= self.batch_size:
                    progress.committed += await self._write(batch)
                    progress.settled = progress.received
                    batch = []
            progress.committed += await self._write(batch)
            progress.settled = progress.received
        return convert.upsert_summary_to_proto(
            progress.received, progress.committed, errors.lines, errors.count)

    async def _until_closing(self, messages: AsyncIterator[pb.Paper]
                             ) -> AsyncIterator[pb.Paper]:
        """``messages`` as they come, until the gateway drains: then NotReady (UNAVAILABLE;
        the batch not yet written is left, to be sent again)."""
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            while not self.closing.is_set():
                message = asyncio.ensure_future(anext(messages))
                forget(message)  # the call cancelled as the stream ended: the end unread
                try:
                    await asyncio.wait((message, closing), return_when=asyncio.FIRST_COMPLETED)
                finally:  # the drain, or the call ended (its deadline): the read goes with it
                    if not message.done():
                        message.cancel()
                if not message.done():  # the drain came first
                    break
                try:
                    yield message.result()
                except StopAsyncIteration:
                    return
            raise NotReady("this gateway is draining (shutting down): the stream was ended "
                           "there")
        finally:
            closing.cancel()

    async def _write(self, papers: list[Paper]) -> int:
        if not papers:
            return 0
        unique = list({p.id: p for p in papers}.values())  # last copy of a repeated id wins
        backend = self.backend.pinned()  # one embedder for the vectors and the collection
        dense = await backend.encode_documents([p.text for p in unique])
        written = await backend.upsert(unique, dense)
        if self.watches is not None:
            self.watches.nudge()
        return written

    async def DeletePapers(  # noqa: N802
        self, request: pb.DeletePapersRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeletePapersResponse:
        try:  # before a slot: a request that can never succeed is not RESOURCE_EXHAUSTED
            ids = (convert.paper_ids_from_proto(request.paper_ids)
                   if len(request.paper_ids) <= IDS_INLINE else
                   await asyncio.to_thread(convert.paper_ids_from_proto, request.paper_ids))
        except Exception as error:
            await _fail(context, error)
        async with self._limited(context, "DeletePapers"):
            deleted = await self.backend.delete(ids)
        return pb.DeletePapersResponse(deleted=deleted)

"""Small Python clients for the papersearch gRPC API: synchronous (CLI, tests) and asyncio
(load test, asyncio applications), with the same calls. Both retry reads that fail
UNAVAILABLE unless ``retry=False`` (client_retry.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from papersearch.api import convert
from papersearch.api.openapi import API_KEY_HEADER
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.client_retry import channel_options
from papersearch.client_tls import Tls
from papersearch.corpus.paper import Paper
from papersearch.index.query import Examples, SearchFilter
from papersearch.pipeline.query import SearchHit, SearchQuery, SearchResult
from papersearch.settings import DEADLINE_MAX_S, is_loopback

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a saved search: a matching paper (``replayed``: indexed before the watch
    began), or the one ``caught_up`` event (no hit) after the replay."""

    hit: SearchHit | None
    replayed: bool = False
    caught_up: bool = False


class Watching:
    """A WatchSearch stream: iterate it for its events (blocking); ``cancel`` ends it (from
    any thread; the iteration then raises grpc.RpcError CANCELLED). Leaving the loop (break,
    an error) or the ``with`` block ends it too: an abandoned watch held one of the gateway's
    serve.watch_max_watches places until garbage collection."""

    def __init__(self, call: Any) -> None:
        self.call = call

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for message in self.call:
                yield _event(message)
        finally:
            self.call.cancel()  # a no-op once the stream has ended

    def cancel(self) -> None:
        self.call.cancel()

    def __enter__(self) -> Watching:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cancel()


class AsyncWatching:
    """A WatchSearch stream on asyncio: ``async for`` its events; ``cancel`` (or the client's
    ``close``) ends it, the iteration then raising grpc.RpcError CANCELLED as Watching's does
    (grpc.aio's own asyncio.CancelledError passed ``except grpc.RpcError`` and read as the
    consumer task's cancellation). Leaving the loop or the ``async with`` block ends it too,
    as for Watching; a cancelled consumer task still gets its CancelledError."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        try:
            async for message in self.call:
                yield _event(message)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.call.cancelled() or task is not None and task.cancelling():
                raise
            raise grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), "the watch was cancelled"
                                       ) from None
        finally:
            self.call.cancel()

    def cancel(self) -> None:
        self.call.cancel()

    async def __aenter__(self) -> AsyncWatching:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.cancel()


def _event(message: pb.WatchEvent) -> WatchEvent:
    hit = None
    if message.HasField("hit"):
        hit = SearchHit(convert.stored_paper_from_proto(message.hit.paper), message.hit.score,
                        convert.stage_scores_from_proto(message.hit.stages))
    return WatchEvent(hit, message.replayed, message.caught_up)


def committed_of(error: grpc.RpcError) -> int | None:
    """Papers a failed UpsertPapers committed before failing (its ``papersearch-committed``
    trailing metadata); None if unknown (the call failed in gRPC or before the gateway ran it).
    Resending the whole stream is always safe: writes are idempotent."""
    return _trailing_int(error, convert.COMMITTED_KEY)


def committed_messages_of(error: grpc.RpcError) -> int | None:
    """N such that the first N messages of a failed UpsertPapers stream are done (committed or
    skipped as invalid): resend from message N+1. None if unknown."""
    return _trailing_int(error, convert.COMMITTED_MESSAGES_KEY)


def _trailing_int(error: grpc.RpcError, key: str) -> int | None:
    trailing = getattr(error, "trailing_metadata", None)  # grpc.Call and grpc.aio errors have it
    for name, value in (trailing() if callable(trailing) else None) or ():
        if name == key:
            return int(value) if str(value).isdigit() else None
    return None


def _deadline(call_s: float | None, client_s: float) -> float:
    """A call's deadline in seconds: its own ``timeout_s``, else the client's."""
    return client_s if call_s is None else checked_timeout(call_s)


def _stream_deadline(timeout_s: float | None) -> float | None:
    """A watch's deadline: none unless the caller gives one."""
    return None if timeout_s is None else checked_timeout(timeout_s)


def checked_timeout(timeout_s: float, name: str = "timeout_s") -> float:
    """``timeout_s`` if it is a positive number of seconds, at most DEADLINE_MAX_S (a year);
    else ValueError: gRPC took inf, or a deadline centuries away, as one already past."""
    if not 0 < timeout_s <= DEADLINE_MAX_S:
        raise ValueError(f"{name} must be a positive number of seconds, at most "
                         f"{DEADLINE_MAX_S} (a year), got {timeout_s:g}")
    return timeout_s


def key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``api_key``: stripped (a key read from a file ends in a
    newline); one that is not printable ASCII, which gRPC metadata cannot carry, is refused."""
    if not api_key or not (api_key := api_key.strip()):
        return ()
    if not (api_key.isascii() and api_key.isprintable()):
        raise ValueError("the API key is not printable ASCII (gRPC metadata cannot carry it): "
                         "check the key you were given")
    return ((API_KEY_HEADER, api_key),)


def target_hosts(target: str) -> tuple[str, ...]:
    """The hosts a gRPC target names (HOST:PORT, [v6]:PORT, dns:, ipv4:, ipv6:; each address
    of a list: the channel goes on to the next when one is down); none for a Unix socket."""
    scheme, colon, rest = target.partition(":")
    scheme = scheme.casefold() if colon else ""
    if scheme in ("unix", "unix-abstract"):
        return ()
    if scheme in ("ipv4", "ipv6"):
        return tuple(_host(address) for address in rest.split(","))
    if scheme == "dns":
        target = rest[2:].partition("/")[2] if rest.startswith("//") else rest  # dns://resolver/
    return (_host(target),)


def _host(target: str) -> str:
    """The host of one HOST:PORT, [v6]:PORT or bare address."""
    try:  # a bare address, "::1" (no port) included
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    if target.startswith("["):
        return target[1:].partition("]")[0]
    host, sep, port = target.rpartition(":")
    return host if sep and port.isdigit() else target


def _warn_if_key_in_clear(target: str, tls: Tls | None,
                          metadata: tuple[tuple[str, str], ...]) -> None:
    """A key sent without TLS beyond this machine can be read on the way. Said, not refused:
    base and dev deployments serve plaintext inside the cluster, whose network may be trusted
    (or encrypted by a mesh)."""
    if metadata and tls is None and not all(map(is_loopback, target_hosts(target))):
        log.warning("the API key goes to this gateway unencrypted (no TLS): anyone on the "
                    "network path can read it; use TLS (Tls, --tls) outside a network you "
                    "trust", extra={"target": target})


def _open(channels: ModuleType, target: str, api_key: str | None, tls: Tls | None,
          retry: bool, wait_for_ready: bool) -> tuple[tuple[tuple[str, str], ...], Any]:
    """The call metadata and the channel, from ``channels`` (grpc or grpc.aio), that both
    clients open: the key checked first (a bad key opens no channel), a key sent in the clear
    said, TLS's channel options added to the retry ones."""
    metadata = key_metadata(api_key)
    _warn_if_key_in_clear(target, tls, metadata)
    options = channel_options(retry, wait_for_ready)
    if tls is None:
        return metadata, channels.insecure_channel(target, options)
    return metadata, channels.secure_channel(target, tls.credentials(),
                                             options + tls.channel_options())


def _similar_request(paper_id: str | Examples, top_k: int, flt: SearchFilter | None
                     ) -> pb.SimilarPapersRequest:
    examples = paper_id if isinstance(paper_id, Examples) else Examples((paper_id,))
    return convert.similar_query_to_proto(
        convert.SimilarQuery(examples, top_k, flt or SearchFilter()))


def _delete_request(paper_ids: Sequence[str]) -> pb.DeletePapersRequest:
    if isinstance(paper_ids, str):
        raise TypeError(f"delete takes a list of paper ids, got the str {paper_ids!r}: "
                        f"write delete([{paper_ids!r}])")
    return pb.DeletePapersRequest(paper_ids=list(paper_ids))


class _UpsertStream:
    """The caller's papers as an UpsertPapers stream. An error they raise ends the stream there
    instead of going to gRPC, which would cancel the call (UNKNOWN "Exception iterating
    requests!") and lose what it committed: the gateway answers with its summary, and the
    caller's own error is raised with a note of what was committed before it."""

    def __init__(self) -> None:
        self.failed: Exception | None = None

    def messages(self, papers: Iterable[Paper]) -> Iterator[pb.Paper]:
        try:
            for paper in papers:
                yield convert.paper_to_proto(paper)
        except Exception as error:  # the caller's: raised by settled() or failed_with()
            self.failed = error

    async def async_messages(self, papers: Iterable[Paper] | AsyncIterable[Paper]
                             ) -> AsyncIterator[pb.Paper]:
        try:
            if isinstance(papers, AsyncIterable):
                async for paper in papers:
                    yield convert.paper_to_proto(paper)
            else:
                for paper in papers:
                    yield convert.paper_to_proto(paper)
        except Exception as error:  # the caller's: raised by settled() or failed_with()
            self.failed = error

    def settled(self, summary: pb.UpsertSummary) -> pb.UpsertSummary:
        """The call's summary; or the caller's error, noted with what was committed."""
        if self.failed is None:
            return summary
        self.failed.add_note(f"the {summary.received} papers before it were sent: "
                             f"{summary.upserted} committed, {summary.skipped} skipped")
        raise self.failed

    def failed_with(self, error: grpc.RpcError) -> NoReturn:
        """The call's ``error``; or, where the caller's papers failed first, the caller's
        error noted with what the trailing metadata says was committed."""
        if self.failed is None:
            raise error
        committed = committed_of(error)
        self.failed.add_note(f"the stream then failed too ({error.code().name}): "
                             + ("what it committed is unknown" if committed is None
                                else f"{committed} papers were committed"))
        raise self.failed from None


class SearchClient:
    def __init__(self, target: str, api_key: str | None = None, timeout_s: float = 30.0,
                 tls: Tls | None = None, retry: bool = True,
                 wait_for_ready: bool = False) -> None:
        self.timeout_s = checked_timeout(timeout_s)  # before the channel: nothing to close
        self.metadata, self.channel = _open(grpc, target, api_key, tls, retry, wait_for_ready)
        self.search_stub = pb_grpc.SearchServiceStub(self.channel)
        self.index_stub = pb_grpc.IndexServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def search(self, query: SearchQuery, timeout_s: float | None = None) -> SearchResult:
        response = self.search_stub.Search(
            convert.search_query_to_proto(query), metadata=self.metadata,
            timeout=_deadline(timeout_s, self.timeout_s),
        )
        return convert.search_result_from_proto(response)

    def similar(self, paper_id: str | Examples, top_k: int = 10,
                flt: SearchFilter | None = None, timeout_s: float | None = None
                ) -> SearchResult:
        """Papers like one paper, or recommendations from ``Examples`` (several positive and
        negative ids)."""
        response = self.search_stub.SimilarPapers(_similar_request(paper_id, top_k, flt),
                                                  metadata=self.metadata,
                                                  timeout=_deadline(timeout_s, self.timeout_s))
        return convert.search_result_from_proto(response)

    def get(self, paper_id: str, timeout_s: float | None = None) -> Paper:
        message = self.search_stub.GetPaper(pb.GetPaperRequest(paper_id=paper_id),
                                            metadata=self.metadata,
                                            timeout=_deadline(timeout_s, self.timeout_s))
        return convert.stored_paper_from_proto(message)

    def watch(self, query: convert.WatchQuery, timeout_s: float | None = None) -> Watching:
        """A saved search: matches as papers are indexed, after any replay (WatchSearch).
        No deadline unless ``timeout_s`` (the stream is meant to stay open)."""
        call = self.search_stub.WatchSearch(convert.watch_query_to_proto(query),
                                            metadata=self.metadata,
                                            timeout=_stream_deadline(timeout_s))
        return Watching(call)

    def upsert(self, papers: Iterable[Paper], timeout_s: float | None = None
               ) -> pb.UpsertSummary:
        """Stream ``papers``; a failure raises grpc.RpcError, and ``committed_of(error)`` says
        how many were committed before it (``committed_messages_of``: where to resend from).
        gRPC reads ``papers`` on a thread of its own: an iterator tied to the calling thread
        (a sqlite3 cursor) must be read into a list, or fed through a queue, first. An error
        ``papers`` raises ends the stream there: the papers before it are written, and the
        error is raised here as it was, with a note of what was committed. The deadline
        (``timeout_s``, else the client's, 30 s by default) bounds the whole stream: give a
        long one more (the gateway's own bound is serve.index_call_timeout_s, 600 s)."""
        stream = _UpsertStream()
        try:
            summary = self.index_stub.UpsertPapers(stream.messages(papers), metadata=self.metadata,
                                                   timeout=_deadline(timeout_s, self.timeout_s))
        except grpc.RpcError as error:
            stream.failed_with(error)
        return stream.settled(summary)

    def delete(self, paper_ids: Sequence[str], timeout_s: float | None = None) -> int:
        """Delete the papers of ``paper_ids`` (a list: a str alone would be read as its
        characters, each an id); the number that were stored."""
        response = self.index_stub.DeletePapers(_delete_request(paper_ids),
                                                metadata=self.metadata,
                                                timeout=_deadline(timeout_s, self.timeout_s))
        return response.deleted

    def health(self, service: str = "", timeout_s: float | None = None) -> str:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service),
                                          timeout=_deadline(timeout_s, self.timeout_s))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncSearchClient:
    """SearchClient's calls on asyncio, over one grpc.aio channel; create it inside the event
    loop that uses it."""

    def __init__(self, target: str, api_key: str | None = None, timeout_s: float = 30.0,
                 tls: Tls | None = None, retry: bool = True,
                 wait_for_ready: bool = False) -> None:
        self.timeout_s = checked_timeout(timeout_s)
        self.metadata, self.channel = _open(grpc.aio, target, api_key, tls, retry,
                                            wait_for_ready)
        self.search_stub = pb_grpc.SearchServiceStub(self.channel)
        self.index_stub = pb_grpc.IndexServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    async def search(self, query: SearchQuery, timeout_s: float | None = None) -> SearchResult:
        response = await self.search_stub.Search(
            convert.search_query_to_proto(query), metadata=self.metadata,
            timeout=_deadline(timeout_s, self.timeout_s),
        )
        return convert.search_result_from_proto(response)

    async def similar(self, paper_id: str | Examples, top_k: int = 10,
                      flt: SearchFilter | None = None, timeout_s: float | None = None
                      ) -> SearchResult:
        """As SearchClient.similar."""
        response = await self.search_stub.SimilarPapers(
            _similar_request(paper_id, top_k, flt), metadata=self.metadata,
            timeout=_deadline(timeout_s, self.timeout_s))
        return convert.search_result_from_proto(response)

    async def get(self, paper_id: str, timeout_s: float | None = None) -> Paper:
        message = await self.search_stub.GetPaper(pb.GetPaperRequest(paper_id=paper_id),
                                                  metadata=self.metadata,
                                                  timeout=_deadline(timeout_s, self.timeout_s))
        return convert.stored_paper_from_proto(message)

    def watch(self, query: convert.WatchQuery, timeout_s: float | None = None) -> AsyncWatching:
        """As SearchClient.watch: ``async for event in client.watch(query)``."""
        return AsyncWatching(self.search_stub.WatchSearch(
            convert.watch_query_to_proto(query), metadata=self.metadata,
            timeout=_stream_deadline(timeout_s)))

    async def upsert(self, papers: Iterable[Paper] | AsyncIterable[Paper],
                     timeout_s: float | None = None) -> pb.UpsertSummary:
        """As SearchClient.upsert; ``papers`` may be an async iterable, read on this loop."""
        stream = _UpsertStream()
        try:
            summary = await self.index_stub.UpsertPapers(
                stream.async_messages(papers), metadata=self.metadata,
                timeout=_deadline(timeout_s, self.timeout_s))
        except grpc.RpcError as error:
            stream.failed_with(error)
        return stream.settled(summary)

    async def delete(self, paper_ids: Sequence[str], timeout_s: float | None = None) -> int:
        """As SearchClient.delete."""
        response = await self.index_stub.DeletePapers(
            _delete_request(paper_ids), metadata=self.metadata,
            timeout=_deadline(timeout_s, self.timeout_s))
        return response.deleted

    async def health(self, service: str = "", timeout_s: float | None = None) -> str:
        response = await self.health_stub.Check(health_pb2.HealthCheckRequest(service=service),
                                                timeout=_deadline(timeout_s, self.timeout_s))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

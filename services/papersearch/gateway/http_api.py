"""HTTP/JSON beside gRPC, in the gateway process, on ``serve.http_port``.

Every method of the gRPC API is ``POST <its gRPC path>`` with the request message as protobuf
JSON (``/papersearch.v1.SearchService/Search``); client streams (UpsertPapers) are
newline-delimited JSON, one message per line, and so are server streams' responses
(WatchSearch: a failure after the first line ends the body with a line {"error": ...}). The
call is then made on this gateway's own gRPC server, over a unix socket only this process
knows (``Gateway`` adds it), with the caller's ``x-api-key`` and deadline (``x-timeout-ms``):
authentication, scopes, limits, the drain gate and the request metrics are the gRPC ones, and so
are the error statuses, whose HTTP codes follow google.rpc.Code (api/openapi.py).
``GET /openapi.json`` is the OpenAPI document generated from the proto; ``GET /healthz`` and
``/readyz`` are liveness and readiness (200 or 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from papersearch.api import openapi
from papersearch.api.json_types import check_types
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.corpus.paper import QUOTE_CHARS, quoted
from papersearch.gateway import page
from papersearch.gateway.auth import WRITE_PREFIXES, Keys
from papersearch.gateway.decode import grpc_receive_limit, too_large
from papersearch.gateway.errors import to_status
from papersearch.gateway.servicers import DEFAULT_DEADLINE_KEY, DEFAULT_DEADLINE_MARGIN_S
from papersearch.gateway.tls import http_ssl_context
from papersearch.settings import ServeSettings, is_loopback
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHUNK_BYTES = 64 * 1024
PARSE_INLINE_BYTES = 64 * 1024  # a larger JSON body is parsed off the event loop
# ... in PARSE_THREADS threads of the front's own, with at most PARSE_WAITING more waiting:
# protobuf's parser holds the GIL, so parses at once only stalled the loop more (README:
# Results, Figures behind the limits), and in the default executor they queued behind the
# index's opens
PARSE_THREADS = 1
PARSE_WAITING = 3
# aiohttp's stop waits this long for a handler still running, then as long again for it to
# end once cancelled: the front's stop takes at most twice this. The drain has waited for the
# calls already (gateway/server.py); what is left is a response being written or a body still
# arriving (a longer wait made the stop outlast the drain's own allowances: README, Results,
# Figures behind the limits).
HTTP_STOP_S = 1.0
TCP_KEEPALIVE_PROBES = 3  # a watch's connection: unanswered probes before it is dropped
TCP_KEEPIDLE_MAX_S = 32767  # Linux's bound on the idle and interval options
RETRY_AFTER_S = 1  # a 429 or 503's Retry-After: the gateway's refusals are short-lived
# A body (an NDJSON line) may hold this many bytes of JSON per byte of serve.max_receive_bytes,
# which counts the message's protobuf bytes, as gRPC's calls do: JSON escapes a character of 2
# or 3 UTF-8 bytes as \uXXXX (6 bytes) and one of 4 as a surrogate pair (12), and quotes every
# string, so a request gRPC takes, written as JSON, may be about twice its protobuf bytes
# (README: Results, Figures behind the limits). The message parsed from it is held to the
# limit itself (_message: 413, as the gRPC side's refusal, gateway/decode.py).
JSON_BYTES_PER_BYTE = 3
CLIENT_CLOSED = 499  # nginx's "client closed request": the status recorded, none sent
# the 503 of a call the front's stop cut (a drain's grace over), the gRPC side's UNAVAILABLE
CUT = ("this gateway is draining (shutting down) and its grace for calls in flight is over: "
       "the call was cut short, send it again (an index write may be partly done; resending "
       "is idempotent)")
# a stream that ended with an error after its 200 was sent: that error's HTTP status, recorded
ENDED_WITH = web.RequestKey("ended_with", int)
FORWARDED_METADATA = ("papersearch-",)  # trailing metadata an error body carries
# the most of protobuf's JSON parse error a message repeats: its words and a client's value,
# QUOTE_CHARS characters escaped (up to 10 characters each, "\U000e0001")
PARSE_ERROR_CHARS = 1_000
# A body's strings a parse error is searched for (the longest): searching every one of a body
# of short strings held the parse thread for seconds (README: Results, Figures behind the limits).
QUOTED_MAX = 256


class HttpError(Exception):
    """A call refused before or after the gRPC hop: its status name and message."""

    def __init__(self, status: str, message: str,
                 metadata: dict[str, str] | None = None, http: int | None = None,
                 summary: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.metadata = metadata or {}
        self.http = http if http is not None else openapi.HTTP_STATUS[status]
        self.summary = summary  # a streamed call's response for what came before the error
        self.headers = headers or {}
        self.close = close  # refused with its body unread: the connection is not kept

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.http, "status": self.status,
                                 "message": self.message}
        if self.metadata:
            error["metadata"] = self.metadata
        if self.summary is not None:
            error["summary"] = self.summary
        response = web.json_response({"error": error}, status=self.http, headers=self.headers)
        if self.http == 401:  # a 401 names its scheme (RFC 9110): the key's header
            response.headers["WWW-Authenticate"] = f'ApiKey header="{openapi.API_KEY_HEADER}"'
        if self.http in (429, 503):  # sent again: HTTP clients' retry policies read the header
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        if self.http == 503 or self.close:  # 503: this gateway cannot serve it (draining, say):
            response.force_close()  # a new connection may reach another, not come back here
        return response


class Parsers:
    """Large JSON bodies parsed off the event loop, a few at a time. Past PARSE_WAITING
    waiting, another is refused (RESOURCE_EXHAUSTED: the client retries) instead of queued;
    one whose caller went away (cancelled) before its turn is never parsed. Large answers are
    written as JSON in the same threads (``json_body``)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="http-parse")
        self._held = 0  # parses running or waiting

    async def run(self, parse: Callable[[], Message]) -> Message:
        if self._held >= PARSE_THREADS + PARSE_WAITING:
            metrics().refused("http_parse_queue")
            raise HttpError("RESOURCE_EXHAUSTED", f"{self._held} large request bodies are "
                            "being read: send it again shortly")
        self._held += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, parse)
        finally:
            self._held -= 1

    async def json_body(self, message: Message) -> bytes:
        """``message`` as a JSON body; past PARSE_INLINE_BYTES of protobuf, in one of the
        threads (a search answer near serve.max_send_bytes held the loop ~150 ms). Never
        refused: the answer is there already, and its size is bounded."""
        if message.ByteSize() <= PARSE_INLINE_BYTES:
            return _json_body(message)
        return await asyncio.get_running_loop().run_in_executor(self._pool, _json_body, message)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class HttpFront:
    """The HTTP server and its channel to the gateway's gRPC server (``unix_target``)."""

    def __init__(self, serve: ServeSettings, unix_target: str) -> None:
        if serve.http_port is None:
            raise ValueError("serve.http_port is not set")
        self.serve = serve
        self.keys = Keys.of(serve)
        self.address = f"{serve.grpc_host}:{serve.http_port}"
        # Connections of their own (a local subchannel pool each): the gRPC server takes
        # serve.max_concurrent_streams calls per connection, and watches, open for hours,
        # filled the one connection every HTTP call shared (past it calls waited, with no
        # deadline, and /readyz timed out). Watches get enough connections for
        # serve.watch_max_watches; every other call and the health checks one of their own.
        # sent up to what the gateway's gRPC server takes in: the gateway's own check (decode.py)
        # answers a message past serve.max_receive_bytes, with what an upsert committed
        options = [("grpc.max_send_message_length", grpc_receive_limit(serve.max_receive_bytes)),
                   ("grpc.max_receive_message_length", serve.max_send_bytes),
                   ("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.aio.insecure_channel(unix_target, options=options)
        self.watch_channels = [
            grpc.aio.insecure_channel(unix_target, options=options)
            for _ in range(math.ceil(serve.watch_max_watches / serve.max_concurrent_streams))]
        self.watching = [0] * len(self.watch_channels)  # HTTP watches open on each
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.parsers = Parsers()
        self.stopping = False  # stop() began: the calls it cancels count as 503
        self.cutting = False  # stop() cuts the calls still running (a drain's grace over)
        self.calls: set[grpc.aio.Call] = set()  # the gRPC calls running, which stop() cuts
        logging.getLogger("aiohttp.server").addFilter(BAD_REQUESTS)  # once per process
        app = web.Application(client_max_size=json_limit(serve.max_receive_bytes))
        app.middlewares.extend([_cors(app, serve.http_cors_origins),
                                _errors_as_json(serve.max_receive_bytes)])
        app.on_response_prepare.append(_not_sniffed)
        # without keys on a loopback address: the DNS-rebinding guard (_loopback_names_only)
        self.loopback_only = self.keys is None and is_loopback(serve.grpc_host)
        if self.loopback_only:
            app.middlewares.append(_loopback_names_only)
        for service in pb.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                app.router.add_post(openapi.http_path(method), self._route(method),
                                    expect_handler=self._expect(method))
        app.router.add_get("/openapi.json", _openapi)
        app.router.add_get("/healthz", self._health("liveness"))
        app.router.add_get("/readyz", self._health("readiness"))
        page.add_routes(app, serve.max_deadline_s)  # the search page: GET / and /page/<file>
        # a client that goes away cancels its handler: a watch (or a search) ends with it, not
        # at its next message or its deadline
        # bodies are not decompressed (none is offered: a gzip bomb, refused for its missing
        # key, was still inflated on the event loop while aiohttp read it to the end); a
        # connection idle or with unfinished headers is closed after http_body_timeout_s
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_STOP_S,
                                    handler_cancellation=True, auto_decompress=False,
                                    keepalive_timeout=serve.http_body_timeout_s)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.serve.grpc_host, self.serve.http_port,
                           ssl_context=http_ssl_context(self.serve))
        await site.start()
        log.info("http listening", extra={"address": self.address})

    async def stop(self, cut: bool = True) -> None:
        """Stop serving; aiohttp waits for the handlers (HTTP_STOP_S at most) before it closes
        the connections. With ``cut`` (a drain's grace over), the gRPC calls still running are
        cancelled first, and their handlers answer 503 UNAVAILABLE (CUT, with Retry-After, the
        connection closed) as the gRPC side's callers get UNAVAILABLE: aiohttp had cancelled
        them with nothing written, the client's connection dropped. Without it, the calls'
        answers, on their way (a handler that returned is not yet its caller's answer: a
        watch's DRAINING, a search's hits), are delivered: cut, they were 503s."""
        self.stopping, self.cutting = True, cut
        if cut:
            for call in list(self.calls):
                call.cancel()
        await self.runner.cleanup()
        self.parsers.close()
        for channel in (self.channel, *self.watch_channels):
            await channel.close()

    def _route(self, method: MethodDescriptor) -> Handler:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        path, _, default_s = self._admission(method)
        if method.server_streaming:  # WatchSearch: the responses as NDJSON lines
            calls = [channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                          response_deserializer=response_type.FromString)
                     for channel in self.watch_channels]

            async def streaming(request: web.Request) -> web.StreamResponse:
                options = self._admitted(request, path, JSON, default_s)
                _probe_when_silent(request, self.serve)
                message = await _message(self.parsers, await self._body(request), request_type,
                                         "request", self.serve.max_receive_bytes, "request body")
                least = min(range(len(calls)), key=self.watching.__getitem__)  # by open watches
                self.watching[least] += 1
                try:
                    call = calls[least](message, **options.now())
                    with self._running(call) as cut:
                        return await _lines_out(request, call, self.serve.http_body_timeout_s,
                                                cut)
                finally:
                    self.watching[least] -= 1

            return _measured(path, streaming, self)
        if method.client_streaming:
            stream = self.channel.stream_unary(
                path, request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString)

            async def streamed(request: web.Request) -> web.StreamResponse:
                options = self._admitted(request, path, openapi.NDJSON, default_s)
                messages = _Lines(request, request_type, self.serve.max_receive_bytes,
                                  self.serve.http_body_timeout_s, self.parsers)
                call = stream(messages.messages(), **options.now())
                try:
                    with self._running(call) as cut:
                        return await self._json(await _answer(call, cut, messages))
                finally:
                    await messages.close()

            return _measured(path, streamed, self)
        unary = self.channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                         response_deserializer=response_type.FromString)

        async def single(request: web.Request) -> web.StreamResponse:
            options = self._admitted(request, path, JSON, default_s)
            message = await _message(self.parsers, await self._body(request), request_type,
                                     "request", self.serve.max_receive_bytes, "request body")
            call = unary(message, **options.now())
            with self._running(call) as cut:
                return await self._json(await _answer(call, cut))

        return _measured(path, single, self)

    async def _json(self, message: Message) -> web.Response:
        return web.Response(body=await self.parsers.json_body(message), content_type=JSON,
                            charset="utf-8")

    @contextlib.contextmanager
    def _running(self, call: grpc.aio.Call) -> Iterator[Callable[[], HttpError | None]]:
        """``call`` among those stop() cuts, while it runs; gives what says whether it did."""
        self.calls.add(call)
        if self.cutting:  # made as the front cuts (in a drain the gate refuses it anyway)
            call.cancel()
        try:
            yield lambda: self._cut(call)
        finally:
            self.calls.discard(call)

    def _cut(self, call: grpc.aio.Call) -> HttpError | None:
        """The answer for ``call``, whose wait just ended cancelled: 503 if stop() cancelled
        it; None if the handler itself was (its client left, or aiohttp's stop gave up)."""
        task = asyncio.current_task()
        if not (self.cutting and call.cancelled()) or (task is not None and task.cancelling()):
            return None
        return HttpError("UNAVAILABLE", CUT)

    def _admission(self, method: MethodDescriptor) -> tuple[str, str, float | None]:
        """A method's path, the Content-Type its body must have, and its deadline without
        x-timeout-ms: a search gets serve.default_deadline_s from its arrival (the gateway
        told that it is its own limit: servicers.DEFAULT_DEADLINE_KEY); a write the gateway's
        index_call_timeout_s, and a watch none (its handler takes no default)."""
        path = openapi.http_path(method)
        if method.server_streaming:
            return path, JSON, None
        content_type = openapi.NDJSON if method.client_streaming else JSON
        return path, content_type, (None if path.startswith(WRITE_PREFIXES)
                                    else self.serve.default_deadline_s)

    def _expect(self, method: MethodDescriptor) -> Callable[[web.Request],
                                                            Awaitable[web.Response | None]]:
        """``Expect: 100-continue`` answered after the checks made before a body is read: a
        refused caller gets its answer at once and never sends the body (aiohttp's own handler
        said 100 first, and the client uploaded a body that was then refused unread)."""
        path, content_type, default_s = self._admission(method)

        async def expect(request: web.Request) -> web.Response | None:
            started = time.perf_counter()
            try:
                if self.loopback_only:  # the middleware's check, which runs only after this
                    _require_loopback_host(request)
                self._admitted(request, path, content_type, default_s)
                value = request.headers.get("Expect", "")
                if request.version < (1, 1):  # an HTTP/1.0 client's expectation is ignored
                    return None  # (RFC 9110): it sends its body as it would without
                if value.lower() != "100-continue":
                    raise HttpError("INVALID_ARGUMENT", f"Expect {quoted(value)} is not "
                                    "accepted (only 100-continue)", http=417)
            except HttpError as error:  # the client may send its body or not: framed only by
                error.close = True  # closing the connection
                metrics().http_request(path.rsplit("/", 1)[-1], error.http,
                                       time.perf_counter() - started)
                return error.response()
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer's own bytes start after it
            return None

        return expect

    def _admitted(self, request: web.Request, path: str, content_type: str,
                  default_s: float | None = None) -> CallOptions:
        """The call options of a request that may send its body: of the right type, with a
        key that may call ``path`` (checked again by the gRPC side) and its x-timeout-ms, else
        ``default_s`` (the server's, and said to be). The key is checked before the body is
        read: a caller without one must not get the server to read and parse up to
        max_receive_bytes for it. Nor is a JSON body read whose Content-Length is over the
        limit (NDJSON is held to it line by line)."""
        _require_type(request, content_type)
        options = _call_options(request, default_s)
        refused = None if self.keys is None else self.keys.refusal(
            path, [key for name, key in options.metadata if name == openapi.API_KEY_HEADER])
        if refused is not None:
            raise HttpError(refused[0].name, refused[1])
        size = request.content_length
        limit = self.serve.max_receive_bytes
        if content_type == JSON and size is not None and size > json_limit(limit):
            metrics().refused("serve.max_receive_bytes")
            raise HttpError("RESOURCE_EXHAUSTED", f"request body of {size} bytes (its "
                            f"Content-Length) over {json_too_long(limit)}", http=413, close=True)
        return options

    async def _body(self, request: web.Request) -> bytes:
        """The body, read within serve.http_body_timeout_s (a client that sends the headers
        and stops must not hold its body buffer for ever)."""
        try:
            async with asyncio.timeout(self.serve.http_body_timeout_s):
                data = await request.read()
        except TimeoutError:
            raise HttpError("DEADLINE_EXCEEDED", "the request body did not arrive within "
                            f"{self.serve.http_body_timeout_s:g} s "
                            "(serve.http_body_timeout_s)", http=408) from None
        except web.RequestPayloadError as error:  # a malformed chunked body: 500 with a traceback
            raise HttpError("INVALID_ARGUMENT", f"the request body is malformed: {error}") \
                from None
        return data

    def _health(self, service: str) -> Handler:
        async def check(_: web.Request) -> web.StreamResponse:
            try:
                answer = await self.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5.0)
            except grpc.aio.AioRpcError as error:  # the details name the private socket
                log.warning("http health: the gRPC server did not answer", extra={
                    "service": service, "code": error.code().name,
                    "reason": (error.details() or "")[:200]})
                return _probe_answer("UNKNOWN")
            return _probe_answer(health_pb2.HealthCheckResponse.ServingStatus.Name(
                answer.status))

        return check


def _probe_answer(status: str) -> web.Response:
    """200 while SERVING, else 503 with Retry-After, as every 503 of the front has."""
    if status == "SERVING":
        return web.json_response({"status": status})
    return web.json_response({"status": status}, status=503,
                             headers={"Retry-After": str(RETRY_AFTER_S)})


class _BadRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (a bad header, a bad Content-Length) at ERROR
    with a traceback, and answers 400 itself: any caller, no key needed, could fill the log
    with them. They are logged at DEBUG here, by what was wrong only: aiohttp's words quote
    the bad line, an x-api-key header with its key (one read from a file ending in CR)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        log.debug("an HTTP request that could not be parsed was refused",
                  extra={"reason": f"{error.code}: {_unquoted(error.message)}"})
        return False


def _unquoted(message: str) -> str:
    """aiohttp's parse error without the request bytes it quotes ("Invalid header value
    char:\n\n    b'x-api-key: ...'", "Missing expected LF after header value: b'...'")."""
    words = re.split(r"\bb['\"]|\n", message, maxsplit=1)[0]
    return words.rstrip(" :")[:QUOTE_CHARS]


BAD_REQUESTS = _BadRequests()


class _Lines:
    """An NDJSON body as request messages, read as it arrives; a line that is not a valid
    message ends the stream there (what came before is sent and committed) and is reported."""

    def __init__(self, request: web.Request, message_type: type[Message], max_bytes: int,
                 stall_s: float, parsers: Parsers) -> None:
        self.request = request
        self.parsers = parsers
        self.message_type = message_type
        self.max_bytes = max_bytes
        self.stall_s = stall_s  # the longest wait for the body's next bytes
        self.sent = 0  # messages
        self.line = 0  # the body's lines read, blank ones included: the one being read
        self.error: HttpError | None = None
        self.closed = False
        self._reading: asyncio.Future[bytes] | None = None  # the read of the next chunk

    async def messages(self) -> AsyncIterator[Message]:
        try:
            async for line in self._lines():
                self.line += 1
                if line.strip():
                    where = f"line {self.line}"
                    message = await _message(self.parsers, line, self.message_type, where,
                                             self.max_bytes)
                    self.sent += 1
                    yield message
        except HttpError as error:
            self.error = error

    async def _lines(self) -> AsyncIterator[bytes]:
        pending = bytearray()
        while chunk := await self._chunk():
            # a read of buffered bytes does not yield to the event loop, nor does a run of
            # blank lines: a body of newlines alone held the loop (gRPC, health; README:
            # Results, Figures behind the limits)
            await asyncio.sleep(0)
            searched = len(pending)  # the bytes before hold no line end: not searched again
            pending += chunk
            start, end = 0, pending.find(b"\n", searched)
            while end >= 0:
                self._within_limit(end - start)  # a line ended in the chunk that brought it
                yield bytes(pending[start:end])
                start, end = end + 1, pending.find(b"\n", end + 1)
            del pending[:start]
            self._within_limit(len(pending))
        yield bytes(pending)

    def _within_limit(self, size: int) -> None:
        if size > json_limit(self.max_bytes):
            metrics().refused("serve.max_receive_bytes")
            self.line += 1  # the one too long, after those read
            raise HttpError("RESOURCE_EXHAUSTED", f"line {self.line} is longer than "
                            f"{json_too_long(self.max_bytes)}", http=413)

    async def close(self) -> None:
        """Stop reading the body: the call ended before it did (its deadline, a drain). gRPC
        leaves the read waiting, and aiohttp, reading the rest of the body itself once the
        handler returns, failed on it: "readany() called while another coroutine is already
        waiting", an ERROR with a traceback, and the read's task left pending."""
        self.closed = True
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            await asyncio.wait([self._reading])

    async def _chunk(self) -> bytes:
        if self.closed:
            return b""
        try:
            async with asyncio.timeout(self.stall_s):
                self._reading = asyncio.ensure_future(self.request.content.read(CHUNK_BYTES))
                return await self._reading
        except TimeoutError:
            self.line += 1
            raise HttpError("DEADLINE_EXCEEDED", f"line {self.line}: the body stopped for "
                            f"{self.stall_s:g} s (serve.http_body_timeout_s)", http=408) from None
        except web.RequestPayloadError as error:  # it had cancelled the call: no answer at all
            self.line += 1
            raise HttpError("INVALID_ARGUMENT", f"line {self.line}: the request body is "
                            f"malformed: {error}") from None


async def _answer(call: Awaitable[Message], cut: Callable[[], HttpError | None],
                  lines: _Lines | None = None) -> Message:
    """The call's response; its error status as an HttpError, and ``cut()``'s if the call was
    cancelled (HttpFront._cut). A stream cut short by a bad line still ends normally on the
    gRPC side (what came before is committed): the caller gets the line's error with the gRPC
    method's progress metadata."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        raise _from_rpc(error) from None
    except asyncio.CancelledError:
        if (failed := cut()) is None:
            raise
        raise failed from None
    if lines is not None and lines.error is not None:
        committed = getattr(response, "upserted", None)
        progress = {"papersearch-committed-messages": str(lines.sent)}
        if committed is not None:
            progress["papersearch-committed"] = str(committed)
        raise HttpError(lines.error.status, f"{lines.error.message}; the {lines.sent} messages "
                        "before it were sent and are done (written, or skipped as invalid: "
                        f"see summary); resend from line {lines.line}", progress,
                        lines.error.http, _dict(response))
    return response


def _from_rpc(error: grpc.aio.AioRpcError) -> HttpError:
    code = error.code()
    metadata = {key: str(value) for key, value in (error.trailing_metadata() or ())
                if key.startswith(FORWARDED_METADATA)}
    return HttpError(code.name, error.details() or code.name, metadata)


@dataclass(frozen=True)
class CallOptions:
    """A request's keys and deadline (its x-timeout-ms, or the server's default), for its gRPC
    call."""

    metadata: tuple[tuple[str, str], ...]
    timeout_s: float | None
    admitted: float  # time.monotonic() as the request was admitted
    limit: str = openapi.TIMEOUT_HEADER  # what set timeout_s

    def now(self) -> dict[str, Any]:
        """The options of a call made now, x-timeout-ms counted from the admission, as a gRPC
        deadline counts the call's transfer: reading and parsing the body had been free (a
        1 s timeout answered 200 after 2.8 s of a slow upload)."""
        if self.timeout_s is None:
            return {"metadata": self.metadata, "timeout": None}
        left = self.timeout_s - (time.monotonic() - self.admitted)
        if left <= 0:
            raise HttpError("DEADLINE_EXCEEDED", f"{self.limit} ran out before the request "
                            "body had been read")
        return {"metadata": self.metadata, "timeout": left}


def _call_options(request: web.Request, default_s: float | None) -> CallOptions:
    keys = request.headers.getall(openapi.API_KEY_HEADER, [])
    if not all(key.isascii() and key.isprintable() for key in keys):  # gRPC metadata cannot
        raise HttpError("UNAUTHENTICATED", f"{openapi.API_KEY_HEADER}: not a valid key "
                        "(keys are printable ASCII)")
    admitted, timeout_s = time.monotonic(), None
    metadata = tuple((openapi.API_KEY_HEADER, key) for key in keys)
    timeout = _single(request, openapi.TIMEOUT_HEADER)
    if timeout is None and default_s is not None:
        metadata += ((DEFAULT_DEADLINE_KEY, "1"),)
        return CallOptions(metadata, default_s + DEFAULT_DEADLINE_MARGIN_S, admitted,
                           "serve.default_deadline_s")
    if timeout is not None:
        digits = re.fullmatch(r"[0-9]{1,16}", timeout)
        if not digits or not 0 < int(timeout) <= openapi.MAX_TIMEOUT_MS:
            raise HttpError("INVALID_ARGUMENT", f"{openapi.TIMEOUT_HEADER}: expected a whole "
                            f"number of milliseconds from 1 to {openapi.MAX_TIMEOUT_MS}, got "
                            f"{timeout[:64]!r}")
        timeout_s = int(timeout) / 1000.0
    return CallOptions(metadata, timeout_s, admitted)



def _require_type(request: web.Request, content_type: str) -> None:
    given = _single(request, "Content-Type")
    if request.content_type != content_type:  # aiohttp's default when the header is absent or
        given = "none" if given is None else quoted(given)  # unparsable: the client's own value
        raise HttpError("INVALID_ARGUMENT", f"Content-Type must be {content_type}, got "
                        f"{given}", http=415)
    encoding = (_single(request, "Content-Encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HttpError("INVALID_ARGUMENT", f"Content-Encoding {quoted(encoding)} is not "
                        "accepted: send the body uncompressed", http=415)


def _single(request: web.Request, name: str) -> str | None:
    """A header's value; given twice, a 400 (aiohttp's lookup took the first silently, where a
    JSON key given twice is refused)."""
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise HttpError("INVALID_ARGUMENT", f"header {name} given {len(values)} times: give it "
                        "once")
    return values[0] if values else None


class _RepeatedKey(ValueError):
    """A JSON object that gives one key twice: json.loads kept the last, silently (a
    filter's date bound, ids to delete), where protobuf's own JSON parser refuses it."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    made = dict(pairs)
    if len(made) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return made


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_object)
    except _RepeatedKey as error:
        raise HttpError("INVALID_ARGUMENT", f"{what} gives the key {quoted(error.key)} more "
                        "than once") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HttpError("INVALID_ARGUMENT", f"{what} is not valid JSON: {error}") from None
    except RecursionError:
        raise HttpError("INVALID_ARGUMENT", f"{what} is nested too deeply") from None
    except ValueError as error:  # an integer of more than 4,300 digits, and the like
        raise HttpError("INVALID_ARGUMENT", f"{what} is not valid JSON: {error}") from None


async def _message(parsers: Parsers, data: bytes, message_type: type[Message], what: str,
                   max_bytes: int, text: str | None = None) -> Message:
    """``data`` (one JSON object, called ``text`` in errors about its JSON, default ``what``)
    as a ``message_type`` of at most ``max_bytes`` (serve.max_receive_bytes: its protobuf
    bytes, what the gRPC side measures; past it 413, where the gRPC side's RESOURCE_EXHAUSTED
    would be a 429 to retry, or past gRPC's own limit the channel's words). protobuf's JSON
    parser is Python (~0.2 s for a MiB of short strings): past PARSE_INLINE_BYTES it runs in
    one of ``parsers``' threads, where the event loop (every other call, the health checks)
    still gets its turns."""
    def parse() -> Message:
        message = _parse(_loads(data, text or what), message_type, what)
        size = message.ByteSize()
        if size > max_bytes:
            metrics().refused("serve.max_receive_bytes")
            raise HttpError("RESOURCE_EXHAUSTED", f"{what}: " + too_large(
                size, max_bytes, "its protobuf encoding"), http=413)
        return message

    return parse() if len(data) <= PARSE_INLINE_BYTES else await parsers.run(parse)


def _parse(value: Any, message_type: type[Message], what: str) -> Message:
    name = message_type.DESCRIPTOR.full_name
    if not isinstance(value, dict):
        raise HttpError("INVALID_ARGUMENT", f"{what}: expected a JSON object ({name})")
    try:
        check_types(value, message_type.DESCRIPTOR)
        return json_format.ParseDict(value, message_type())
    # check_types' ValueError; past ParseError, protobuf lets a number out of range (10**400
    # for a float, 1e999 for an enum) out as the error its conversion met
    except (json_format.ParseError, OverflowError, TypeError, ValueError) as error:
        raise HttpError("INVALID_ARGUMENT", f"{what}: not a valid {name}: "
                        f"{_quote_values(str(error), value)}") from None
    except SystemError:  # its name lookup, given a key or enum name "\ud800" (not UTF-8)
        raise HttpError("INVALID_ARGUMENT", f"{what}: not a valid {name}: a field name or "
                        "value holds an unpaired surrogate (not valid Unicode)") from None


def _quote_values(message: str, body: Any, limit: int = PARSE_ERROR_CHARS) -> str:
    """``message`` (its first ``limit`` characters) with each string of ``body``, key or value,
    that it repeats as ``quoted`` gives it, as the gRPC side's messages repeat a client's value:
    escaped, at most QUOTE_CHARS of it. protobuf's parse errors repeat the offending value or
    key whole and raw (a newline, ANSI escapes, a bidi override: into a log line, a terminal).
    Only a string that is long or holds a character to escape is looked for (a short plain one,
    "x", would be found in protobuf's own words); a long number is cut, and any unprintable
    character left (protobuf's own newline) is escaped too."""
    strings: set[str] = set()
    numbers: set[str] = set()
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            strings.update(k for k in item if isinstance(k, str) and _to_quote(k))
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _to_quote(item):
            strings.add(item)
        elif isinstance(item, int | float) and len(number := str(item)) > QUOTE_CHARS:
            numbers.add(number)  # a 200-digit top_k
    for number in sorted(numbers, key=len, reverse=True):  # first: the message gets short
        message = message.replace(number, f"{number[:QUOTE_CHARS]}... ({len(number)} characters)")
    # the longest QUOTED_MAX only: each is a scan of the message (a flood of short ones held
    # the parse thread for seconds); one not among them is still escaped below, within ``limit``
    for text in heapq.nlargest(QUOTED_MAX, strings, key=len):
        if text in message:  # quoted() leaves nothing unprintable
            message = message.replace(f'"{text}"', quoted(text)).replace(text, quoted(text))
    return _escaped(message, limit)


def _escaped(text: str, limit: int) -> str:
    """``text`` with each unprintable character escaped, cut to ``limit`` characters after the
    escaping (cut before it, a run of them made a message ten times the limit)."""
    pieces: list[str] = []
    size = 0
    for char in text:
        piece = char if char.isprintable() else repr(char)[1:-1]
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def _to_quote(text: str) -> bool:
    return len(text) > QUOTE_CHARS or not text.isprintable()


def _json_body(message: Message) -> bytes:
    return json.dumps(_dict(message)).encode()


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _probe_when_silent(request: web.Request, serve: ServeSettings) -> None:
    """TCP keepalive on a watch's connection, as gRPC pings its clients: probes after
    ``keepalive_time_s`` of silence, the connection dropped (and the watch with it) when
    ``keepalive_timeout_s`` of them go unanswered. A watch without matches sends nothing, so a
    client gone without a word (a laptop asleep, a NAT's entry dropped) held its watch for the
    kernel's default, over two hours."""
    sock = None if request.transport is None else request.transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not hasattr(socket, "TCP_KEEPIDLE"):  # Linux's options (and macOS's since 3.10)
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE,
                    min(TCP_KEEPIDLE_MAX_S, max(1, round(serve.keepalive_time_s))))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL,
                    min(TCP_KEEPIDLE_MAX_S, max(1, math.ceil(serve.keepalive_timeout_s
                                                             / TCP_KEEPALIVE_PROBES))))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPALIVE_PROBES)


async def _lines_out(request: web.Request, call: Any, stall_s: float,
                     cut: Callable[[], HttpError | None]) -> web.StreamResponse:
    """A server stream as NDJSON, each message on its line as it comes. An error before the
    first message is a plain HTTP error (its status code); one after it, once the 200 is sent,
    ends the body with a last line {"error": {...}} (code, status, message), also ``cut()``'s
    for a call the front's stop cancelled (HttpFront._cut). The gRPC call is
    cancelled when the HTTP client goes away, or stops reading for ``stall_s``
    (serve.http_body_timeout_s): a line it does not take in that long drops the connection
    (the handler waited on it for ever, long after the watch behind it had ended)."""
    async def bounded(sending: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(stall_s):
                await sending
        except TimeoutError:
            log.info("http stream: the client stopped reading; connection dropped",
                     extra={"path": request.path, "stall_s": stall_s})
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None  # as for a client gone: quietly, 499

    try:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as error:
            raise _from_rpc(error) from None
        except asyncio.CancelledError:
            if (first := cut()) is None:
                raise
            raise first from None
        response = web.StreamResponse()
        response.content_type = openapi.NDJSON
        await response.prepare(request)
        while message is not grpc.aio.EOF:
            await bounded(response.write(json.dumps(_dict(message)).encode() + b"\n"))
            try:
                message = await call.read()
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                failed = (_from_rpc(error) if isinstance(error, grpc.aio.AioRpcError)
                          else cut())
                if failed is None:
                    raise
                request[ENDED_WITH] = failed.http
                body = {"code": failed.http, "status": failed.status, "message": failed.message}
                await bounded(response.write(json.dumps({"error": body}).encode() + b"\n"))
                break
        await bounded(response.write_eof())  # it waits for the client to take the rest
        return response
    finally:
        call.cancel()


async def _openapi(_: web.Request) -> web.StreamResponse:
    return web.json_response(openapi.document())


def _measured(path: str, handler: Handler, front: HttpFront) -> Handler:
    """``handler`` counted by its HTTP status: a stream's in-body error's (ENDED_WITH) once
    its 200 went out; a call cut by the front's stop (a drain's grace over) as 503, what the
    gRPC side records for it, not as a client gone."""
    method = path.rsplit("/", 1)[-1]

    async def measured(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = request.get(ENDED_WITH, response.status)
            return response
        except HttpError as error:
            status = error.http
            raise
        except web.HTTPException as error:
            status = error.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            # the client went (a timeout, a watch it closed): not a 500
            status = openapi.HTTP_STATUS["UNAVAILABLE"] if front.stopping else CLIENT_CLOSED
            raise
        finally:
            metrics().http_request(method, status, time.perf_counter() - started)

    return measured


def _cors(app: web.Application, origins: Sequence[str]) -> Any:
    """CORS for ``serve.http_cors_origins``: a listed origin's preflight (OPTIONS) is answered
    by the returned middleware, and every response to it (streams and errors too) carries
    Access-Control-Allow-Origin; other origins get no CORS headers, so browsers keep their
    pages out."""
    allowed = frozenset(origins)

    def allowed_origin(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin and (origin in allowed or "*" in allowed) else None

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if origin := allowed_origin(request):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            # not safelisted: a page could not read a 429/503's retry hint, a 405's methods
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, Allow"

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or allowed_origin(request) is None:
            return await handler(request)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST", "Access-Control-Max-Age": "600",
            "Access-Control-Allow-Headers": ", ".join(
                ("Content-Type", openapi.API_KEY_HEADER, openapi.TIMEOUT_HEADER))})

    app.on_response_prepare.append(on_prepare)
    return preflight


async def _not_sniffed(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, errors and JSON included, not only the page's files: a browser takes it as
    the type it says (a JSON error echoing a path is never run as HTML)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


@web.middleware
async def _loopback_names_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without keys, on a loopback address (``make run``): only requests addressed to a loopback
    name. A web page the developer visits can point its own host name at 127.0.0.1 (DNS
    rebinding); the browser then takes this server for that page's origin, and its JSON POSTs
    (DeletePapers) would need no key. Such requests name that page's host in ``Host``."""
    _require_loopback_host(request)
    return await handler(request)


def _require_loopback_host(request: web.Request) -> None:
    host = request.headers.get("Host")
    if host is None or _loopback_name(host):
        return
    raise HttpError("PERMISSION_DENIED", f"Host {quoted(host)} is not a loopback name: without "
                    "API keys this server answers only requests to localhost, 127.0.0.1 or "
                    "[::1] (a guard against DNS rebinding); configure serve.api_keys to serve "
                    "other names")


def _loopback_name(host: str) -> bool:
    """Whether a ``Host`` header (name or address, with or without a port) is loopback."""
    if host.startswith("["):  # [::1]:8000
        name = host[1:host.find("]")]
    elif host.count(":") == 1:  # 127.0.0.1:8000, localhost:8000
        name = host.rpartition(":")[0]
    else:
        name = host
    return is_loopback(name) or name.casefold().endswith(".localhost")


def json_limit(max_bytes: int) -> int:
    """The most bytes of JSON a body (an NDJSON line) may hold: JSON_BYTES_PER_BYTE times
    ``max_bytes`` (serve.max_receive_bytes, which counts protobuf bytes)."""
    return JSON_BYTES_PER_BYTE * max_bytes


def json_too_long(max_bytes: int) -> str:
    return (f"the server's limit of {json_limit(max_bytes)} bytes of JSON "
            f"({JSON_BYTES_PER_BYTE} x serve.max_receive_bytes, {max_bytes}, which counts "
            "the message's protobuf bytes)")


def _errors_as_json(max_bytes: int) -> Any:
    """Errors as the API's JSON error object, also aiohttp's own (404, 405, 413)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as error:
            return error.response()
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return _from_http(error, request, max_bytes).response()
        except Exception as error:  # a fault here: logged with an incident id, as over gRPC
            code, message = to_status(error)
            return HttpError(code.name, message).response()

    return middleware


def _from_http(error: web.HTTPException, request: web.Request, max_bytes: int) -> HttpError:
    if error.status == 404:
        return HttpError("NOT_FOUND", f"no such path: {request.rel_url.raw_path[:64]!r}",
                         http=404)  # as sent: its decoded form may be a path that exists
    if error.status == 405:
        return HttpError("UNIMPLEMENTED", f"{request.method} is not allowed on "
                         f"{request.path[:64]!r}", http=405,
                         headers={"Allow": error.headers.get("Allow", "")})
    if error.status == 413:
        metrics().refused("serve.max_receive_bytes")
        return HttpError("RESOURCE_EXHAUSTED", f"request body over "
                         f"{json_too_long(max_bytes)}", http=413)
    status = "INVALID_ARGUMENT" if error.status < 500 else "INTERNAL"
    return HttpError(status, error.reason, http=error.status)


def socket_target(directory: Path) -> str:
    """The gRPC target of the gateway's private unix socket in ``directory``."""
    return f"unix:{directory / 'grpc.sock'}"

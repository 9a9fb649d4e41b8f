"""Request decoding in one place: a message protobuf cannot parse is INVALID_ARGUMENT, one
past ``serve.max_receive_bytes`` RESOURCE_EXHAUSTED.

gRPC's own deserializer raises before any handler runs, so the client would see UNKNOWN and the
log a traceback. Here the papersearch handlers receive raw bytes and decode them inside the
call; a failure names the string field that holds invalid UTF-8 where one does, else the type.

The size limit is enforced here too, with gRPC's own set above it (grpc_receive_limit,
server.server_options): past gRPC's limit a client stream just ends, so UpsertPapers committed
its last batch, answered into a call already failed, and was counted OK; a unary request was
refused before any interceptor, and counted nowhere. Here the refusal is the call's own status
(an upsert's with what it committed), and the request metrics see it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from papersearch.errors import MessageTooLarge
from papersearch.gateway.method_handlers import API_PREFIX, HEALTH_PREFIX, with_behavior
from papersearch.pipeline.query import InvalidQuery
from papersearch.settings import GRPC_INT_MAX
from papersearch.telemetry import metrics

_MAX_DEPTH = 32  # nesting the walker follows; the API's requests nest two levels
_MAX_FIELDS = 20_000  # fields it reads: twice a valid request's most (10,000 ids to delete)
RECEIVE_MARGIN_BYTES = 4 * 1024 * 1024  # gRPC's own limit lies up to this far above ours
GRPC_MAX_MESSAGE_BYTES = GRPC_INT_MAX  # gRPC core's largest limit (a C int)


def grpc_receive_limit(max_bytes: int) -> int:
    """gRPC's own limit for the API's messages: above ``max_bytes`` (ours) by its size, at most
    RECEIVE_MARGIN_BYTES, so a message past ours reaches DecodeInterceptor and a lowered limit
    still bounds what gRPC buffers. Past this one gRPC refuses a message itself: a client
    stream then just ends (what an UpsertPapers committed is not told)."""
    return min(max_bytes + min(max_bytes, RECEIVE_MARGIN_BYTES), GRPC_MAX_MESSAGE_BYTES)


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Innermost interceptor: authentication turns callers away before their bytes are read.
    Health's methods too, on both ports: health needs no key, and bytes it could not parse were
    UNKNOWN with gRPC's words and an ERROR traceback in the log for anyone who sent them.
    (Reflection's one method streams both ways, which this does not take: gRPC decodes it.)"""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes  # serve.max_receive_bytes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if (handler is None or handler.request_deserializer is None
                or not details.method.startswith((API_PREFIX, HEALTH_PREFIX))):
            return handler
        descriptor = _input_type(details.method)
        decode = handler.request_deserializer
        # The request argument: a message (unary) or an iterator of them (client stream).
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
        if handler.unary_unary is not None:
            behavior = _unary(handler.unary_unary, decode, descriptor, self.max_bytes)
        elif handler.stream_unary is not None:
            behavior = _stream(handler.stream_unary, decode, descriptor, self.max_bytes)
        elif handler.unary_stream is not None:  # WatchSearch: written with context.write
            behavior = _unary(handler.unary_stream, decode, descriptor, self.max_bytes)
        else:  # bidirectional streams: the API has none
            return handler
        return with_behavior(handler, behavior, request_deserializer=None)


@functools.cache
def _input_type(method: str) -> Descriptor:
    """"/papersearch.v1.SearchService/Search" -> the SearchRequest descriptor."""
    name = method.lstrip("/").replace("/", ".")
    return descriptor_pool.Default().FindMethodByName(name).input_type


def too_large(size: int, max_bytes: int, what: str = "the request message") -> str:
    return (f"{what} is {size} bytes, past the server's limit of {max_bytes} bytes "
            "(serve.max_receive_bytes)")


def _unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    decode: Callable[[bytes], Any], descriptor: Descriptor, max_bytes: int,
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        if len(raw) > max_bytes:
            metrics().refused("serve.max_receive_bytes")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                too_large(len(raw), max_bytes))
        try:
            request = decode(raw)
        except Exception:  # noqa: BLE001 (DecodeError, or anything else the parser raises)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe(raw, descriptor))
        return await behavior(request, context)

    return call


def _stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    decode: Callable[[bytes], Any], descriptor: Descriptor, max_bytes: int,
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[Any]]:
    async def messages(raw: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        number = 0
        async for chunk in raw:
            number += 1
            if len(chunk) > max_bytes:  # the servicer answers with what it committed
                raise MessageTooLarge(too_large(len(chunk), max_bytes,
                                                f"message {number} of the stream"))
            try:
                message = decode(chunk)
            except Exception:  # noqa: BLE001
                # The servicer maps InvalidQuery to INVALID_ARGUMENT like its own validation.
                raise InvalidQuery(
                    f"message {number} of the stream: {describe(chunk, descriptor)}"
                ) from None
            yield message

    async def call(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await behavior(messages(raw), context)

    return call


def describe(data: bytes, descriptor: Descriptor) -> str:
    """Why ``data`` is not a ``descriptor`` message, for the client."""
    field = invalid_utf8_field(data, descriptor)
    if field is not None:
        return f"{field}: not valid UTF-8"
    return f"request is not a valid {descriptor.full_name}"


def invalid_utf8_field(data: bytes, descriptor: Descriptor) -> str | None:
    """The first string field of ``data`` (a serialized ``descriptor`` message) that holds
    invalid UTF-8, as "SearchRequest.filter.authors[1]"; None if there is none, the wire
    format breaks before one is found, or it is not among the first _MAX_FIELDS fields (the
    walk is Python on the event loop: a 4 MiB message holds a million fields)."""
    try:
        return _Walk().message(data, descriptor, descriptor.name, 0)
    except (IndexError, ValueError):
        return None


class _Walk:
    def __init__(self) -> None:
        self.fields_left = _MAX_FIELDS

    def message(self, data: bytes, descriptor: Descriptor, path: str, depth: int) -> str | None:
        pos, seen = 0, dict[int, int]()
        while pos < len(data):
            self.fields_left -= 1
            if self.fields_left < 0:
                return None
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos:pos + length], pos + length
                if len(chunk) < length:
                    return None
                found = self.field(chunk, descriptor.fields_by_number.get(number), path, seen,
                                   depth)
                if found is not None:
                    return found
            else:  # groups and invalid wire types: nothing the API sends
                return None
        return None

    def field(self, chunk: bytes, field: FieldDescriptor | None, path: str,
              seen: dict[int, int], depth: int) -> str | None:
        if field is None:  # an unknown field: not ours to judge
            return None
        name = f"{path}.{field.name}"
        if field.is_repeated:
            index = seen.get(field.number, 0)
            seen[field.number] = index + 1
            name = f"{name}[{index}]"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < _MAX_DEPTH:
            return self.message(chunk, field.message_type, name, depth + 1)
        return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError when truncated
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")

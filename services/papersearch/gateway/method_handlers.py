"""What the interceptors share: the same RPC method handler with its behaviour replaced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

API_PREFIX = "/papersearch."  # the API's methods; health and reflection are not among them
HEALTH_PREFIX = "/grpc.health.v1."  # health's methods: no key, decoded as the API's are
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

_FACTORIES = {  # (request streaming, response streaming) -> handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


_SAME: Any = object()


def api_behavior(handler: grpc.RpcMethodHandler | None, method: str) -> Behavior | None:
    """The behaviour of an API method's handler (unary or client-streamed requests, a unary
    response; or a response stream written with ``context.write``, as WatchSearch is, or its
    refusal, gateway/auth.py), or None for any other handler."""
    if handler is None or not method.startswith(API_PREFIX):
        return None
    return (handler.unary_unary or handler.stream_unary or handler.unary_stream
            or handler.stream_stream)


def with_behavior(
    handler: grpc.RpcMethodHandler, behavior: Callable[..., Any],
    request_deserializer: Callable[[bytes], Any] | None = _SAME,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers as ``handler`` that runs ``behavior``;
    ``request_deserializer`` replaces the request's (None: the behaviour gets raw bytes)."""
    make = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    if request_deserializer is _SAME:
        request_deserializer = handler.request_deserializer
    return make(behavior, request_deserializer=request_deserializer,
                response_serializer=handler.response_serializer)

"""API keys with scopes: every call but health checks and reflection needs a configured
``x-api-key``. Read keys may call SearchService; write keys every method. A wrong or missing
key is UNAUTHENTICATED, a read key on IndexService PERMISSION_DENIED. Keys are compared in
constant time and never logged."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from papersearch.api.openapi import API_KEY_HEADER
from papersearch.settings import ServeSettings

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
WRITE_PREFIXES = ("/papersearch.v1.IndexService/",)


class Keys:
    """The configured keys and what each may call."""

    def __init__(self, write_keys: Sequence[str], read_keys: Sequence[str] = ()) -> None:
        self._write = [k.encode() for k in write_keys]
        self._read = [k.encode() for k in read_keys]

    @classmethod
    def of(cls, serve: ServeSettings) -> Keys | None:
        """The keys ``serve`` configures; None where there are none (calls need no key)."""
        write = [k.get_secret_value() for k in serve.api_keys]
        read = [k.get_secret_value() for k in serve.read_api_keys]
        return cls(write, read) if write or read else None

    def refusal(self, method: str, given: Sequence[str]) -> tuple[grpc.StatusCode, str] | None:
        """Why a call of ``method`` (its gRPC path) with the ``x-api-key`` values ``given``
        is refused, or None."""
        if method.startswith(OPEN_PREFIXES):
            return None
        offered = [g.encode() for g in given]
        if _matches(offered, self._write):
            return None
        if not _matches(offered, self._read):
            return grpc.StatusCode.UNAUTHENTICATED, f"missing or invalid {API_KEY_HEADER}"
        if method.startswith(WRITE_PREFIXES):
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"this {API_KEY_HEADER} has read scope; IndexService needs a write key")
        return None


def _matches(given: Sequence[bytes], keys: Sequence[bytes]) -> bool:
    return any(hmac.compare_digest(g, k) for g in given for k in keys)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        given = [str(v) for k, v in details.invocation_metadata or () if k == API_KEY_HEADER]
        refused = self.keys.refusal(details.method, given)
        return handler if refused is None else _deny(handler, *refused)


def _deny(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler | None:
    """A handler that refuses the call without reading its request: served as a
    request-streaming method (the same bytes on the wire), so gRPC does not first receive a
    unary request whole (up to serve.max_receive_bytes, per stream) for a caller without a key."""
    async def abort(_: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler is None:
        return None
    refuse = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
        else grpc.stream_unary_rpc_method_handler
    return refuse(abort, response_serializer=handler.response_serializer)

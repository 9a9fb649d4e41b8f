"""API keys with scopes: every call but health checks and reflection needs a configured
``x-api-key``. Read keys may call SearchService; write keys every method. A wrong or missing
key is UNAUTHENTICATED, a read key on IndexService PERMISSION_DENIED. Keys are compared in
constant time and never logged."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from papersearch.gateway.method_handlers import with_behavior

API_KEY_HEADER = "x-api-key"
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
WRITE_PREFIXES = ("/papersearch.v1.IndexService/",)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, write_keys: Sequence[str], read_keys: Sequence[str] = ()) -> None:
        self._write = [k.encode() for k in write_keys]
        self._read = [k.encode() for k in read_keys]

    @staticmethod
    def _matches(metadata: Sequence[tuple[str, Any]], keys: Sequence[bytes]) -> bool:
        given = [str(v).encode() for k, v in metadata if k == API_KEY_HEADER]
        return any(hmac.compare_digest(g, k) for g in given for k in keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = details.invocation_metadata or ()
        if self._matches(metadata, self._write):
            return handler
        if not self._matches(metadata, self._read):
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                         f"missing or invalid {API_KEY_HEADER}")
        if details.method.startswith(WRITE_PREFIXES):
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED,
                         f"this {API_KEY_HEADER} has read scope; IndexService needs a write key")
        return handler


def _deny(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler | None:
    async def abort(_: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return handler if handler is None else with_behavior(handler, abort)

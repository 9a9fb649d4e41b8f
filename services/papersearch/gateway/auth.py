"""API keys: every call but health checks and reflection needs a configured ``x-api-key``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from papersearch.gateway.method_handlers import with_behavior

API_KEY_HEADER = "x-api-key"
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def _allowed(self, metadata: Sequence[tuple[str, Any]]) -> bool:
        given = [str(v).encode() for k, v in metadata if k == API_KEY_HEADER]
        return any(hmac.compare_digest(g, k) for g in given for k in self._keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES) or self._allowed(details.invocation_metadata):
            return handler
        return _deny(handler)


async def _abort(_: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or invalid {API_KEY_HEADER}")


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return handler if handler is None else with_behavior(handler, _abort)

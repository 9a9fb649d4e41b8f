"""Request count and latency by method and status code for the papersearch services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from papersearch.gateway.gate import DrainGate
from papersearch.gateway.method_handlers import Behavior, api_behavior, with_behavior
from papersearch.telemetry import metrics

# gRPC cancels a call whose deadline passed a few ms before time_remaining() reaches 0 (more
# on a loaded machine; README: Results, Figures behind the limits); a client that cancels
# itself that close to its deadline is counted as expired.
DEADLINE_SLACK_S = 0.25


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Outermost interceptor: it also sees calls that authentication turned away. A call that
    ``gate``'s drain cut (its grace over) counts as UNAVAILABLE, what its caller got."""

    def __init__(self, gate: DrainGate) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        behavior = api_behavior(handler, details.method)
        if behavior is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        return with_behavior(handler, _measured(method, behavior, self.gate))


def _measured(method: str, behavior: Behavior, gate: DrainGate) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            response = await behavior(request, context)
            code = context.code() or grpc.StatusCode.OK
            return response
        except asyncio.CancelledError:  # by gRPC: the client left, its deadline passed, or
            left = context.time_remaining()  # a drain stopped the server
            if gate.cutting:
                code = grpc.StatusCode.UNAVAILABLE
            elif left is not None and left <= DEADLINE_SLACK_S:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics().request(method, _name(code), time.perf_counter() - start)

    return call


def _name(code: grpc.StatusCode | int) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")

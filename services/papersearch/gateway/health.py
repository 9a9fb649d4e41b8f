"""grpc.health.v1 (Check, List, Watch) for the gateway's two meanings of health (gateway/server.py).

grpc_health's own asyncio servicer writes each Watch update while it holds the lock that setting
a status takes: one Watch client that stops reading (HTTP/2 flow control, a window of 0) then
blocks every later status change, so readiness stays SERVING through an outage and a drain
never gets past marking the gateway not ready. Here setting a status never waits: it replaces
the value and wakes the watchers, and each Watch stream writes on its own, so a stalled one
holds only itself (and its place among ``max_watches``; the server's stop ends it)."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from papersearch.corpus.paper import quoted
from papersearch.telemetry import metrics

ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):
    """Statuses by service name, with a bound on open Watch streams: health needs no key, and
    each Watch stays open until its client leaves, so without one any caller could hold
    unbounded streams (and their buffers) open."""

    def __init__(self, max_watches: int) -> None:
        self.max_watches = max_watches
        self.watching = 0
        self._statuses: dict[str, ServingStatus] = {}
        self._changed = asyncio.Event()  # set, and replaced, at every change
        self._shut_down = False

    async def set(self, service: str, status: ServingStatus) -> None:
        """``service``'s status, unless shutting down (then every status stays NOT_SERVING)."""
        if not self._shut_down:
            self._statuses[service] = status
            self._wake()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good."""
        self._shut_down = True
        self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (gRPC's name)
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,  # quoted: at most 64 characters
                                f"no health status for service {quoted(request.service)}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest,  # noqa: N802 (gRPC's name)
                   context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            service: health_pb2.HealthCheckResponse(status=status)
            for service, status in self._statuses.items()})

    async def Watch(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (gRPC's name)
                    context: grpc.aio.ServicerContext) -> None:
        """The current status, then each change (an unknown service: SERVICE_UNKNOWN until it
        has one); intermediate statuses may be skipped, the latest is always sent."""
        if self.watching >= self.max_watches:
            metrics().refused("serve.health_max_watches")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.max_watches} health Watch streams are open on this "
                                "gateway (serve.health_max_watches); use Check, or retry later")
        self.watching += 1
        try:
            sent: ServingStatus | None = None
            while True:
                changed = self._changed  # before reading: a change while writing is not missed
                status = self._statuses.get(request.service, SERVICE_UNKNOWN)
                if status != sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                await changed.wait()
        finally:
            self.watching -= 1

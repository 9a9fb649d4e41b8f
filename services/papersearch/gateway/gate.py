"""The drain gate: counts the papersearch calls a gateway is running and, once closed, refuses
new ones with UNAVAILABLE, so that during a drain every call that reached the gateway is either
answered in full or refused before anything was done (safe to send again). Stopping the gRPC
server outright would instead cancel calls that had arrived but not yet started (CANCELLED, seen
under load), and refuse health checks that Kubernetes still asks during the drain.

A refused client sends its call again at once (our clients' channels retry UNAVAILABLE reads
after about 0.1 s, then 0.2 s: client_retry.py). A retry that reaches the server as it stops is
cancelled by gRPC before the gate sees it (CANCELLED, which clients do not retry; grpc/grpc
issue 41785), so the drain keeps refusing until calls stop coming (``wait_quiet``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from papersearch.gateway.method_handlers import Behavior, api_behavior, with_behavior

REFUSED = "this gateway is draining (shutting down): nothing was done, send the call again"
# a wake this late means the loop was held up (a sleep here normally wakes within milliseconds)
STALL_S = 0.1


class DrainGate(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.running = 0
        self.closed = False
        self.closing = asyncio.Event()  # set by close(): streams that write end at it
        # set when the drain's grace is over: the calls still running are cancelled by the
        # server (their callers get UNAVAILABLE), not by callers that went away
        self.cutting = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_call = 0.0  # the event loop's time of the last papersearch call's arrival

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        behavior = api_behavior(handler, details.method)
        if behavior is None:  # health and reflection stay open while draining
            return handler
        return with_behavior(handler, self._gated(behavior))

    @property
    def last_call(self) -> float:
        """The event loop's time of the last papersearch call's arrival at the gate."""
        return self._last_call

    def close(self) -> None:
        """Refuse every call from now on; those running go on (an UpsertPapers stream to the
        end of its batch in progress: ``closing``)."""
        self.closed = True
        self.closing.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Whether the running calls all finished within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet_s: float, limit_s: float) -> None:
        """Until no call has come for ``quiet_s``, or ``limit_s`` is over (clients that go on
        sending regardless). A quiet counts only while the event loop kept time: after a stall
        (a loaded machine), calls that arrived meanwhile may not have reached the gate yet, and
        this wait woke first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        awake_since = 0.0
        while ((left := max(self._last_call, awake_since) + quiet_s - loop.time()) > 0
               and loop.time() < end):
            wake = loop.time() + min(left, end - loop.time())
            await asyncio.sleep(wake - loop.time())
            if loop.time() - wake > STALL_S:
                awake_since = loop.time()

    def _gated(self, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._last_call = asyncio.get_running_loop().time()
            if self.closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE, REFUSED)
            self.running += 1
            self._idle.clear()
            try:
                return await behavior(request, context)
            finally:
                self.running -= 1
                if self.running == 0:
                    self._idle.set()

        return call

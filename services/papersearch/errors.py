"""What the serving backend raises when its deployments cannot take a call, or the gateway for
a request past its size limit; gateway/errors.py maps them to status codes
(RESOURCE_EXHAUSTED, UNAVAILABLE)."""

from __future__ import annotations


class Overloaded(Exception):
    """A queue is full: a deployment's (Serve's max_queued_requests), a gateway's coalescer's
    or its index calls' (serve.max_index_queue). ``limit`` names the bound (the refusal
    metric's label); both travel in ``args``, so the error pickles across Ray whole."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message, limit)
        self.limit = limit

    def __str__(self) -> str:
        return str(self.args[0])


class NotReady(Exception):
    """A deployment has no running replica, or the replica serving a call died or became
    unreachable mid-call: the call can be sent again (UNAVAILABLE)."""


class MessageTooLarge(Exception):
    """A request message past serve.max_receive_bytes (RESOURCE_EXHAUSTED, as gRPC's own)."""

"""What the serving backend raises when its deployments cannot take a call; gateway/errors.py
maps them to status codes (RESOURCE_EXHAUSTED, UNAVAILABLE)."""

from __future__ import annotations


class Overloaded(Exception):
    """A deployment's queue is full (Serve's max_queued_requests)."""


class NotReady(Exception):
    """A deployment has no running replica, or the replica serving a call died or became
    unreachable mid-call: the call can be sent again (UNAVAILABLE)."""

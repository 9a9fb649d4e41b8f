"""Exceptions -> gRPC status codes with a clear message; nothing internal leaks to clients."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from papersearch.errors import NotReady, Overloaded
from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    PaperNotFound,
    StoreUnavailable,
)
from papersearch.models.runtime import InvalidInput
from papersearch.pipeline.query import InvalidQuery, quoted

log = logging.getLogger(__name__)


def root_cause(error: BaseException) -> BaseException:
    """Ray wraps a replica's exception; its ``cause`` is the original one, message intact."""
    seen = 0
    while isinstance(getattr(error, "cause", None), BaseException) and seen < 8:
        error = error.cause  # type: ignore[attr-defined]
        seen += 1
    return error


def to_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``error``."""
    error = root_cause(error)
    if isinstance(error, InvalidQuery | InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, PaperNotFound):
        return grpc.StatusCode.NOT_FOUND, f"paper {quoted(error.paper_id)} is not in the index"
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the search finished"
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: queues are full, retry later"
    if isinstance(error, StoreUnavailable | NotReady):
        return grpc.StatusCode.UNAVAILABLE, f"service unavailable: {error}"
    if isinstance(error, EmbedderMismatch | CollectionMissing):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    incident = uuid.uuid4().hex[:12]
    log.error("internal error", extra={"incident": incident}, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"

"""Exceptions -> gRPC status codes with a clear message; nothing internal leaks to clients."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from papersearch.corpus.paper import quoted
from papersearch.errors import MessageTooLarge, NotReady, Overloaded
from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    InvalidExamples,
    PaperNotFound,
    StoreUnavailable,
    WeightingMismatch,
)
from papersearch.models.manifest import ModelNotFound
from papersearch.models.runtime import InvalidInput
from papersearch.pipeline.query import InvalidQuery
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

INCIDENT_ATTRIBUTE = "papersearch_incident"  # the id an error was logged under (_incident)


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
    if isinstance(error, InvalidQuery | InvalidInput | InvalidExamples):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, PaperNotFound):
        return grpc.StatusCode.NOT_FOUND, f"paper {quoted(error.paper_id)} is not in the index"
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call finished"
    if isinstance(error, Overloaded):
        metrics().refused(error.limit)
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later"
    if isinstance(error, MessageTooLarge):
        metrics().refused("serve.max_receive_bytes")
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    # The index's own words name its addresses, paths and OS errors: they go to the log under
    # an incident id, the client gets what they mean.
    if isinstance(error, StoreUnavailable):
        incident = _incident(error, "index unavailable", logging.WARNING)
        return (grpc.StatusCode.UNAVAILABLE,
                f"service unavailable: the index is unavailable (incident {incident})")
    if isinstance(error, NotReady):
        return grpc.StatusCode.UNAVAILABLE, f"service unavailable: {error}"
    if isinstance(error, CollectionMissing):
        incident = _incident(error, "index missing", logging.WARNING)
        return (grpc.StatusCode.FAILED_PRECONDITION, "the index has not been created yet "
                f"(papersearch ingest creates it; incident {incident})")
    if isinstance(error, ModelNotFound):  # an embedder a collection (or the previous one of
        # a migration) was built with is not exported here: every call needs the pointer's views
        incident = _incident(error, "model missing", logging.ERROR)
        return (grpc.StatusCode.FAILED_PRECONDITION, "a model the index was built with is "
                f"missing or damaged in this service's model repository (incident {incident})")
    if isinstance(error, EmbedderMismatch):
        incident = _incident(error, "embedder mismatch", logging.ERROR)
        return (grpc.StatusCode.FAILED_PRECONDITION, "the index was built by another embedder "
                f"than this service runs (incident {incident})")
    if isinstance(error, WeightingMismatch):
        incident = _incident(error, "bm25 weighting mismatch", logging.ERROR)
        return (grpc.StatusCode.FAILED_PRECONDITION, "the index records another BM25 weighting "
                "(index.bm25_avg_len, index.bm25_title_weight) than this service's settings: "
                f"writes are refused (incident {incident})")
    incident = _incident(error, "internal error", logging.ERROR, traceback=True)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"


def _incident(error: BaseException, what: str, level: int, *, traceback: bool = False) -> str:
    """Log ``error`` under a new incident id, the one its client is told; an error already
    logged keeps its id and is not logged again. The collection opener gives every call
    within its retry interval the one failure it met: during an outage each search wrote the
    same line again (500 in 1.7 s), where one failure is one incident."""
    incident = getattr(error, INCIDENT_ATTRIBUTE, None)
    if isinstance(incident, str):
        return incident
    incident = uuid.uuid4().hex[:12]
    log.log(level, what, extra={"incident": incident, "detail": str(error)},
            exc_info=error if traceback else None)
    try:
        setattr(error, INCIDENT_ATTRIBUTE, incident)
    except AttributeError:  # an exception type with slots: logged each time, as before
        pass
    return incident

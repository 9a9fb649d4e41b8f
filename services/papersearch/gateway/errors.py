"""Exceptions -> gRPC status codes with a clear message; nothing internal leaks to clients."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback as traceback_module
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from papersearch.corpus.paper import quoted
from papersearch.errors import MessageTooLarge, NotReady, Overloaded
from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    InvalidExamples,
    PaperNotFound,
    StorageExhausted,
    StoreUnavailable,
    WeightingMismatch,
)
from papersearch.models.manifest import ModelNotFound
from papersearch.models.runtime import InvalidInput
from papersearch.pipeline.query import InvalidQuery
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

INCIDENT_ATTRIBUTE = "papersearch_incident"  # the id an error was logged under (_incident)
# The same failure (kind and words) met again within this many seconds of being logged is the
# same incident: during a Qdrant server outage every call raises its own error, and each
# wrote its own WARNING (one line per search, hundreds a second under load).
INCIDENT_REPEAT_S = 10.0
INCIDENTS_KEPT = 256  # distinct failures remembered; past it, the oldest are forgotten


class ServerDeadline(TimeoutError):
    """A call's time the server set (the client's deadline was none, or past the longest
    allowed) ran out."""

    def __init__(self, limit_s: float, setting: str) -> None:
        super().__init__(f"{setting} ({limit_s:.3g} s) ran out")
        self.limit_s = limit_s
        self.setting = setting


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
    if isinstance(error, ServerDeadline):
        return (grpc.StatusCode.DEADLINE_EXCEEDED, f"the server's time limit for this call "
                f"({error.setting}, {error.limit_s:.3g} s) ran out before it finished")
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
    if isinstance(error, StorageExhausted):
        incident = _incident(error, "index storage exhausted", logging.ERROR)
        return (grpc.StatusCode.UNAVAILABLE, "service unavailable: the index has run out of "
                f"disk space or file descriptors (incident {incident})")
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
                "(index.bm25_avg_len, index.bm25_title_weight, index.bm25_tokenizer) than this "
                "service's settings: writes are refused, and searches too where the tokenizer "
                f"differs (incident {incident})")
    incident = _incident(error, "internal error", logging.ERROR, traceback=True)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"


@dataclass
class _Logged:
    incident: str
    at: float
    repeats: int = 0  # calls that met it since, not logged


@dataclass
class Incidents:
    """Failures logged in the last ``repeat_s``, by what they are and what they say."""

    repeat_s: float = INCIDENT_REPEAT_S
    clock: Callable[[], float] = time.monotonic
    logged: dict[tuple[str, str, str], _Logged] = field(default_factory=dict)

    def incident(self, error: BaseException, what: str, level: int, traceback: bool) -> str:
        # with a traceback, where it was raised too: two bugs saying the same words ("'NoneType'
        # object is not subscriptable") are two incidents, each with its own traceback
        where = _raised_at(error) if traceback else ""
        key, now = (what, type(error).__name__, f"{error}{where}"), self.clock()
        seen = self.logged.get(key)
        if seen is not None and now - seen.at < self.repeat_s:
            seen.repeats += 1
            return seen.incident
        incident = uuid.uuid4().hex[:12]
        log.log(level, what, extra={"incident": incident, "detail": str(error),
                                    "repeats": 0 if seen is None else seen.repeats},
                exc_info=error if traceback else None)
        self.logged.pop(key, None)  # re-inserted last: the dict's order is the log's
        self.logged[key] = _Logged(incident, now)
        while len(self.logged) > INCIDENTS_KEPT:
            del self.logged[next(iter(self.logged))]
        return incident


def _raised_at(error: BaseException) -> str:
    frames = traceback_module.extract_tb(error.__traceback__, limit=None)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


_incidents = Incidents()


def _incident(error: BaseException, what: str, level: int, *, traceback: bool = False) -> str:
    """The incident id ``error`` is logged under, the one its client is told. An error object
    already logged keeps its id (the collection opener gives every call within its retry
    interval the one failure it met: 500 lines in 1.7 s of searches), and so does the same
    failure met again within INCIDENT_REPEAT_S; when it is logged again after that, its line
    counts the calls that met it meanwhile (``repeats``)."""
    incident = getattr(error, INCIDENT_ATTRIBUTE, None)
    if isinstance(incident, str):
        return incident
    incident = _incidents.incident(error, what, level, traceback)
    try:
        setattr(error, INCIDENT_ATTRIBUTE, incident)
    except AttributeError:  # an exception type with slots: looked up by its words each time
        pass
    return incident

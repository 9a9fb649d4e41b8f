"""The open-loop request sender: every scheduled request leaves at its time, whatever the
earlier ones are doing, up to a cap on requests in flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import grpc

from papersearch.index.query import Mode
from papersearch.pipeline.query import SearchQuery, SearchResult

log = logging.getLogger(__name__)

OK = "OK"
CLIENT_ERROR = "CLIENT_ERROR"  # the client failed without a gRPC status (logged)
DRAIN_GRACE_S = 1.0  # past the deadline, for a DEADLINE_EXCEEDED to come back on its own


class Searcher(Protocol):
    async def search(self, query: SearchQuery, timeout_s: float | None = None) -> SearchResult: ...


class Outcome(StrEnum):
    COMPLETED = "completed"  # an answer: OK or an error status
    NOT_SENT = "not_sent"  # the in-flight cap was reached at its send time
    CANCELLED = "cancelled"  # still in flight when the run's drain time ran out


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One scheduled request; times are seconds from the run's start."""

    scheduled_s: float
    outcome: Outcome
    started_s: float | None = None
    ended_s: float | None = None  # answered or cancelled
    code: str | None = None  # gRPC status name, when completed
    reranked: bool | None = None  # from an OK response
    rerank_depth: int | None = None  # from an OK response: candidates reranked (0: none)

    @property
    def latency_s(self) -> float | None:
        if self.outcome is not Outcome.COMPLETED or self.started_s is None or self.ended_s is None:
            return None
        return self.ended_s - self.started_s


@dataclass(frozen=True, slots=True)
class SearchOptions:
    top_k: int = 10
    mode: Mode = "hybrid"
    rerank: bool = True


class Runner:
    """Sends ``queries`` (cycled) at ``offsets`` on ``clock`` (seconds since the start)."""

    def __init__(self, searcher: Searcher, queries: Sequence[str], options: SearchOptions,
                 deadline_s: float, max_in_flight: int, clock: Callable[[], float]) -> None:
        self.searcher = searcher
        self.queries = queries
        self.options = options
        self.deadline_s = deadline_s
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._client_errors = 0

    async def run(self, offsets: Sequence[float], until: float = 0.0) -> list[RequestRecord]:
        """Send everything, keep running until ``until`` on the clock (the profile's end: a
        trailing pause is watched, not skipped), wait for answers at most the deadline (plus a
        grace second) after that, cancel what is left; one record per offset, in order."""
        records: list[RequestRecord | None] = [None] * len(offsets)
        pending: set[asyncio.Task[None]] = set()
        for i, offset in enumerate(offsets):
            delay = offset - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= self.max_in_flight:
                records[i] = RequestRecord(offset, Outcome.NOT_SENT)
                continue
            task = asyncio.create_task(self._send(records, i, offset))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if (rest := until - self.clock()) > 0:
            await asyncio.sleep(rest)
        if pending:
            _, late = await asyncio.wait(set(pending), timeout=self.deadline_s + DRAIN_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        missing = [i for i, record in enumerate(records) if record is None]
        if missing:
            raise RuntimeError(f"load test lost track of requests {missing[:10]}")
        return [record for record in records if record is not None]

    async def _send(self, records: list[RequestRecord | None], i: int, offset: float) -> None:
        o = self.options
        query = SearchQuery(self.queries[i % len(self.queries)], o.top_k, o.mode, o.rerank)
        started = self.clock()
        try:
            result = await self.searcher.search(query, timeout_s=self.deadline_s)
        except asyncio.CancelledError:
            records[i] = RequestRecord(offset, Outcome.CANCELLED, started, self.clock())
            raise
        except grpc.aio.AioRpcError as error:
            records[i] = RequestRecord(offset, Outcome.COMPLETED, started, self.clock(),
                                       error.code().name)
        except Exception:  # noqa: BLE001 (counted, never fatal to the run)
            records[i] = RequestRecord(offset, Outcome.COMPLETED, started, self.clock(),
                                       CLIENT_ERROR)
            self._client_errors += 1
            if self._client_errors == 1:
                log.exception("client-side error (further ones counted, not logged)")
        else:
            records[i] = RequestRecord(offset, Outcome.COMPLETED, started, self.clock(), OK,
                                       result.reranked, result.rerank_depth)

"""Saved searches (WatchSearch): new papers matched against every watch at once.

Each watch keeps its query's vector (encoded once, when it starts) in one matrix per gateway.
A batch of papers this gateway indexes (IndexService.UpsertPapers, whose dense vectors are
computed for the upsert anyway) is matched against all watches with one matrix product: watches
x papers cosines (every vector is L2-normalised), compared with each watch's min_relevance;
only the pairs above it are checked against the watch's filter, in Python. No search runs per
watch or per paper, and nothing is encoded again.

Each watcher has a bounded queue of matches; ``publish`` never waits for a watcher. One that
falls ``serve.watch_queue`` matches behind (it reads too slowly) is ended with
RESOURCE_EXHAUSTED; a drain ends every watch with UNAVAILABLE (``close``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from papersearch.corpus.paper import Paper
from papersearch.index.query import SearchFilter

log = logging.getLogger(__name__)

DRAINING = ("this gateway is draining (shutting down): the watch ended; reconnect, with "
            "replay_since to catch up")


@dataclass(frozen=True, slots=True)
class Match:
    paper: Paper
    cosine: float


def matches_filter(flt: SearchFilter, paper: Paper) -> bool:
    """``flt`` applied to one paper as the index applies it (index/query.py, SearchFilter):
    AND of the conditions, any listed category or author, dates inclusive, an undated paper
    never within a date bound."""
    if flt.published_from is not None or flt.published_to is not None:
        if paper.published is None:
            return False
        if flt.published_from is not None and paper.published < flt.published_from:
            return False
        if flt.published_to is not None and paper.published > flt.published_to:
            return False
    if flt.categories and not set(flt.categories) & set(paper.categories):
        return False
    return not flt.authors or bool(set(flt.authors) & set(paper.authors))


@dataclass(eq=False)
class Watch:
    """One watcher: its query vector, threshold, filter, and matches not yet sent."""

    vector: np.ndarray
    min_relevance: float
    filter: SearchFilter
    capacity: int
    pending: deque[Match] = field(default_factory=deque)
    ended: tuple[grpc.StatusCode, str] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, match: Match) -> None:
        if self.ended is not None:
            return
        if len(self.pending) >= self.capacity:
            self.pending.clear()
            self.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"this watcher fell {self.capacity} matches behind (serve.watch_queue): "
                     "the watch ended; reconnect, with replay_since to catch up")
            return
        self.pending.append(match)
        self.wake.set()

    def end(self, code: grpc.StatusCode, message: str) -> None:
        if self.ended is None:
            self.ended = (code, message)
        self.wake.set()


class WatchHub:
    """A gateway's watches (at most ``max_watches``) and their query vectors as one matrix."""

    def __init__(self, max_watches: int, queue: int) -> None:
        self.max_watches = max_watches
        self.queue = queue
        self.watches: list[Watch] = []
        self.closed = False
        self._matrix: np.ndarray | None = None  # rows: self.watches' vectors; None: rebuild
        self._thresholds: np.ndarray | None = None

    def add(self, vector: np.ndarray, min_relevance: float, flt: SearchFilter) -> Watch | None:
        """A new watch, or None at the limit (or once closed: the caller refuses the call)."""
        if self.closed or len(self.watches) >= self.max_watches:
            return None
        watch = Watch(np.asarray(vector, dtype=np.float32).ravel(), min_relevance, flt,
                      self.queue)
        self.watches.append(watch)
        self._matrix = None
        return watch

    def remove(self, watch: Watch) -> None:
        if watch in self.watches:
            self.watches.remove(watch)
            self._matrix = None

    def publish(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        """Match newly indexed ``papers`` (rows of ``dense``) against every watch; queue each
        match to its watcher. Returns the number of matches; never waits."""
        if not self.watches or not len(papers):
            return 0
        if self._matrix is None or self._thresholds is None:
            self._matrix = np.stack([w.vector for w in self.watches])
            self._thresholds = np.array([w.min_relevance for w in self.watches],
                                        dtype=np.float32)
        vectors = np.asarray(dense, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self._matrix.shape[1]:
            log.warning("watch vectors and papers differ in dimension: not matched",
                        extra={"papers": vectors.shape, "watches": self._matrix.shape})
            return 0
        cosines = self._matrix @ vectors.T  # watches x papers
        count = 0
        for row, column in zip(*np.nonzero(cosines >= self._thresholds[:, None]), strict=True):
            watch, paper = self.watches[row], papers[column]
            if matches_filter(watch.filter, paper):
                watch.offer(Match(paper, float(cosines[row, column])))
                count += 1
        return count

    def close(self) -> None:
        """End every watch with UNAVAILABLE and refuse new ones (a drain)."""
        self.closed = True
        for watch in self.watches:
            watch.end(grpc.StatusCode.UNAVAILABLE, DRAINING)

"""Saved searches (WatchSearch): new papers matched against every watch at once.

Where new papers come from (``WatchFeed``): the index itself, so a watch sees every paper
written to the collection, by any gateway replica or ingest job, not only by its own gateway.
Every write stamps its points with ``indexed_at`` (index/schema.py). A gateway asks the index
every ``serve.watch_poll_s``, and at once after each of its own upserts, for the ids written
lately (one filtered scroll on a range index, ids and stamps only). While watches are open it
fetches, with their stored dense vectors, the papers among them it has not seen before, and
matches those. Every half ``serve.watch_lookback_s`` a poll reads the whole look-back window,
which delivers a write that became visible late, or whose writer's clock lags, by up to half
of it (that half is timed on the monotonic clock: a step of the gateway's wall clock does not
put the sweeps off); the first look after the gateway starts only learns what is there. A
watch gets what the gateway finds after the watch began (and may so get a paper written up to
one poll before it); a paper written again is sent again; deletions are not sent.

Each watch keeps its query's vector (encoded once, when it starts) in one matrix per gateway.
A batch of new papers is matched against all watches with one matrix product: watches x papers
cosines (every vector is L2-normalised), compared with each watch's min_relevance; only the
pairs above it are checked against the watch's filter (in Python, once per paper and distinct
filter; a watch without one skips it), and each match is queued as one ``Match``. No search
runs per watch or per paper, and nothing is encoded again. The feed matches a poll's papers in
steps (``STEP_PAIRS``, ``STEP_WAKES``) and lets the event loop run between them: in one go, a
bulk ingest's thousand papers matching a thousand watches held the gateway's loop (its health
checks and every other call) for 1.5-3 s.

Each watcher has a bounded queue of matches; ``publish`` never waits for a watcher. One that a
batch finds still ``serve.watch_queue`` matches behind (it reads too slowly) is ended with
RESOURCE_EXHAUSTED; a batch alone never ends it (a bulk ingest can match a broad watch
thousands of times in one poll, before any watcher could read), so a queue holds at most
``watch_queue`` plus one batch's matches. A poll's papers are one batch, in however many steps
(a watcher is judged once, at its first match of the poll). A drain ends every watch with
UNAVAILABLE (``close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from papersearch.corpus.paper import Paper
from papersearch.index.errors import CollectionMissing
from papersearch.index.query import SearchFilter
from papersearch.index.store import now_ms
from papersearch.pipeline.backend import Backend
from papersearch.settings import ServeSettings
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

# One step of the feed's matching, between two turns of the event loop: at most STEP_PAIRS
# (watch, paper) pairs, where each match builds and queues a Match (a step takes longer when
# a full garbage collection of the queued matches falls in it); and the first matches of at
# most STEP_WAKES watches, as each wakes its watcher's handler, whose next turn (its first
# write) also takes the loop: a thousand woken at once held it far longer than one step
# (README: Results, Figures behind the limits).
STEP_PAIRS = 32_768
STEP_WAKES = 64

MOVED = ("the index moved to another embedder (an embedder migration): the watch ended; "
         "reconnect, with replay_since to catch up")
DRAINING = ("this gateway is draining (shutting down): the watch ended; reconnect, with "
            "replay_since to catch up")


@dataclass(frozen=True, slots=True)
class Match:
    paper: Paper
    cosine: float


@dataclass(frozen=True, slots=True)
class FilterRule:
    """A filter applied to one paper as the index applies it (index/query.py, SearchFilter):
    AND of the conditions, any listed category or author, dates inclusive, an undated paper
    never within a date bound. Its name lists are sets once per watch: built for every
    (watch, paper) pair (100 names of each, 3-10 us a pair), a feed step of a thousand
    filtered watches held the event loop 0.2-0.45 s."""

    filter: SearchFilter
    categories: frozenset[str]
    authors: frozenset[str]

    @classmethod
    def of(cls, flt: SearchFilter) -> FilterRule:
        return cls(flt, frozenset(flt.categories), frozenset(flt.authors))

    def admits(self, paper: Paper) -> bool:
        flt = self.filter
        if flt.published_from is not None or flt.published_to is not None:
            if paper.published is None:
                return False
            if flt.published_from is not None and paper.published < flt.published_from:
                return False
            if flt.published_to is not None and paper.published > flt.published_to:
                return False
        if self.categories and self.categories.isdisjoint(paper.categories):
            return False
        return not self.authors or not self.authors.isdisjoint(paper.authors)


@dataclass(eq=False)
class Watch:
    """One watcher: its query vector, threshold, filter, and matches not yet sent."""

    vector: np.ndarray
    min_relevance: float
    filter: SearchFilter
    capacity: int
    embedder: str | None = None  # sha of the embedder that made ``vector`` (None: unknown)
    pending: deque[Match] = field(default_factory=deque)
    offered: int = 0  # matches queued so far: pending's first is match offered - len(pending)
    ended: tuple[grpc.StatusCode, str] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    over: asyncio.Event = field(default_factory=asyncio.Event)  # set once: ``ended`` is set
    rule: FilterRule | None = field(init=False)  # None: no filter

    def __post_init__(self) -> None:
        self.rule = None if self.filter == SearchFilter() else FilterRule.of(self.filter)

    @property
    def full(self) -> bool:
        """``capacity`` matches wait: a batch with a match for it ends it."""
        return len(self.pending) >= self.capacity

    def offer(self, matches: Sequence[Match], first: bool = True) -> None:
        """Queue one batch's matches, or end the watch if the batch finds it still
        ``capacity`` matches behind. ``first=False``: more of a batch whose first matches were
        offered already (a poll matched in steps): queued, as those were."""
        if self.ended is not None or not matches:
            return
        if first and self.full:
            self.overflow()
            return
        self.pending.extend(matches)
        self.offered += len(matches)
        self.wake.set()

    def overflow(self) -> None:
        """End the watch: a batch found it ``capacity`` matches behind."""
        metrics().refused("serve.watch_queue")
        self.pending.clear()
        self.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                 f"this watcher fell {self.capacity} matches behind (serve.watch_queue): "
                 "the watch ended; reconnect, with replay_since to catch up")

    def end(self, code: grpc.StatusCode, message: str) -> None:
        if self.ended is None:
            self.ended = (code, message)
        self.over.set()
        self.wake.set()


class WatchHub:
    """A gateway's watches (at most ``max_watches``) and their query vectors as one matrix."""

    def __init__(self, max_watches: int, queue: int) -> None:
        self.max_watches = max_watches
        self.queue = queue
        self.watches: list[Watch] = []
        self.closed = False
        self._matrix: np.ndarray | None = None  # rows: self._rows' vectors; None: rebuild
        self._thresholds: np.ndarray | None = None
        self._rules: list[FilterRule | None] = []  # per row; None: no filter
        self._rows: list[Watch] = []  # the open watches of ``_embedder`` the matrix holds
        self._embedder: str | None = None
        self.written = asyncio.Event()  # set by this gateway's upserts: the feed looks at once

    def nudge(self) -> None:
        """Papers were just written through this gateway: have the feed look now."""
        self.written.set()

    def add(self, vector: np.ndarray, min_relevance: float, flt: SearchFilter,
            embedder: str | None = None) -> Watch | None:
        """A new watch, or None at the limit (or once closed: the caller refuses the call)."""
        if self.closed or self.open >= self.max_watches:
            return None
        watch = Watch(np.asarray(vector, dtype=np.float32).ravel(), min_relevance, flt,
                      self.queue, embedder)
        self.watches.append(watch)
        self._matrix = None
        return watch

    @property
    def open(self) -> int:
        """Watches whose handler runs: what the limit counts. An ended watch leaves at once,
        also when its handler was waiting to write (a watcher that stopped reading)."""
        return len(self.watches)

    def remove(self, watch: Watch) -> None:
        if watch in self.watches:
            self.watches.remove(watch)
            self._matrix = None

    def publish(self, papers: Sequence[Paper], dense: np.ndarray,
                embedder: str | None = None) -> int:
        """Match newly indexed ``papers`` (rows of ``dense``, made by ``embedder``) against
        every open watch whose query vector that embedder made (or whose maker is unknown);
        queue each match to its watcher. Returns the number of matches queued (a watcher this
        batch ends is queued none); never waits. All in one go: see ``publish_in_steps``."""
        return sum(self._steps(papers, dense, embedder))

    async def publish_in_steps(self, papers: Sequence[Paper], dense: np.ndarray,
                               embedder: str | None = None) -> int:
        """``publish``, letting the event loop run after each step: the papers in order,
        ``STEP_PAIRS`` (watch, paper) pairs at most (one paper at least) and the first
        matches of ``STEP_WAKES`` watches at most a step. Still one batch: a watcher is
        judged at its first match, its later ones are queued."""
        queued = 0
        for step in self._steps(papers, dense, embedder):
            queued += step
            await asyncio.sleep(0)
        return queued

    def _steps(self, papers: Sequence[Paper], dense: np.ndarray,
               embedder: str | None) -> Iterator[int]:
        """``publish``'s work; yields, after each step, the number of matches it queued."""
        judged: set[Watch] = set()  # the watches this batch offered matches to
        start = 0
        while start < len(papers):
            self._rebuild(embedder)
            rows, rules, matrix, thresholds = (self._rows, self._rules, self._matrix,
                                               self._thresholds)
            if matrix is None or thresholds is None:
                return
            stop = start + max(1, STEP_PAIRS // len(rows))
            chunk = papers[start:stop]
            vectors = np.asarray(dense[start:stop], dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != matrix.shape[1]:
                log.warning("watch vectors and papers differ in dimension: not matched",
                            extra={"papers": np.shape(dense), "watches": matrix.shape})
                return
            start = stop
            cosines = matrix @ vectors.T  # watches x papers
            above = cosines >= thresholds[:, None]
            admitted: dict[SearchFilter, np.ndarray] = {}  # per paper: 1 in, 0 out, -1 unasked
            queued = woken = 0
            for row in np.flatnonzero(above.any(axis=1)).tolist():
                watch, rule = rows[row], rules[row]
                if watch.ended is not None:
                    continue
                columns = np.flatnonzero(above[row])
                if rule is not None:
                    verdicts = admitted.get(rule.filter)
                    if verdicts is None:
                        verdicts = admitted[rule.filter] = np.full(len(chunk), -1, dtype=np.int8)
                    unasked = columns[verdicts[columns] < 0]
                    verdicts[unasked] = [rule.admits(chunk[c]) for c in unasked.tolist()]
                    columns = columns[verdicts[columns] > 0]
                    if not len(columns):
                        continue
                first = watch not in judged
                if first:
                    judged.add(watch)
                    woken += 1
                    if watch.full:  # this batch ends it: its matches are not built
                        watch.overflow()
                        continue
                watch.offer([Match(chunk[c], cosine) for c, cosine in zip(
                    columns.tolist(), cosines[row, columns].tolist(), strict=True)], first)
                queued += len(columns)
                if woken == STEP_WAKES:
                    yield queued
                    queued = woken = 0
            yield queued

    def _rebuild(self, embedder: str | None) -> None:
        """The matrix of the open watches of ``embedder``, unless it holds them already."""
        if self._matrix is not None and embedder == self._embedder:
            return
        self._rows = [w for w in self.watches if w.ended is None
                      and (w.embedder is None or embedder is None or w.embedder == embedder)]
        self._embedder = embedder
        self._matrix = np.stack([w.vector for w in self._rows]) if self._rows else None
        self._thresholds = np.array([w.min_relevance for w in self._rows], dtype=np.float32)
        self._rules = [w.rule for w in self._rows]

    def retarget(self, embedder: str) -> None:
        """End the watches whose query vector another embedder made: new papers are encoded
        by ``embedder`` now (a migration swapped the index)."""
        for watch in self.watches:
            if watch.embedder is not None and watch.embedder != embedder:
                watch.end(grpc.StatusCode.UNAVAILABLE, MOVED)
                self._matrix = None

    def close(self) -> None:
        """End every watch with UNAVAILABLE and refuse new ones (a drain)."""
        self.closed = True
        for watch in self.watches:
            watch.end(grpc.StatusCode.UNAVAILABLE, DRAINING)


class WatchFeed:
    """Publishes to ``hub`` the papers written to the index, as the module's note describes.

    Most polls read only the ids stamped from ``RECENT_MS`` before the newest stamp seen (a
    write visible that late, or stamped by a clock that much slow, is still among them); every
    half look-back window one poll sweeps the whole window for later stragglers. A poll costs
    the index about 11 us per id read (benchmarks/watch_feed.py), so this keeps a busy window
    from being read in full twice a second.

    After a migration's swap the new collection's window is learnt afresh (its copy stamped
    every paper moments before), but what was written since the swap is still published."""

    RECENT_MS = 1_000

    def __init__(self, hub: WatchHub, index: Backend, serve: ServeSettings) -> None:
        self.hub = hub
        self.index = index
        self.poll_s = serve.watch_poll_s
        self.lookback_ms = round(serve.watch_lookback_s * 1000)
        self._known: dict[str, int] | None = None  # the window: point id -> indexed_at
        # time.monotonic() from which the next poll reads the whole window: on the wall clock,
        # a step back of the gateway's clock by D suspended the sweeps for D more
        self._sweep_at = -math.inf
        self._failing = False
        self._embedder: str | None = None  # whose vectors the last poll read
        # a migration's swap (pointer time) whose collection's window is still to be learnt
        self._swapped_at: int | None = None

    async def run(self) -> None:
        """Poll until cancelled (the gateway's drain)."""
        while True:
            self.hub.written.clear()
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 (a bug must not end the feed for every watch)
                log.exception("watch feed: a poll failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self.hub.written.wait()

    async def poll(self) -> int:
        """Look once; the number of matches queued. With no watch open (or on the first look)
        only ids are read. A failing index is logged (once until it answers again) and asked
        again at the next poll; what it missed is delivered then if the look-back window still
        covers it."""
        index = self.index.pinned()
        try:
            embedder = await index.embedder_sha()
        except Exception:  # noqa: BLE001 (as a failing read below: asked again next poll)
            return 0
        if embedder != self._embedder:
            if self._embedder is not None:  # another collection: learn its window afresh
                log.info("watch feed: the index moved to another embedder")
                self._known, self._swapped_at = None, index.swapped_at_ms()
            self._embedder = embedder
        self.hub.retarget(embedder)
        now, tick = now_ms(), time.monotonic()  # stamps are compared on the wall clock
        window_start = now - self.lookback_ms
        known = self._known
        since = window_start
        if known and tick < self._sweep_at:
            since = max(window_start, min(max(known.values()), now) - self.RECENT_MS)
        try:
            found = await index.indexed_since(
                since, known if known is not None and self.hub.watches else None)
        except Exception as error:  # noqa: BLE001 (the index may be down or not created yet)
            missing = isinstance(error, CollectionMissing)
            if not self._failing and not missing:
                log.warning("watch feed: the index did not answer", extra={
                    "reason": repr(error)[:200]})
                self._failing = True
            if self._known is None and missing:
                self._known = {}  # no collection yet: what its window holds later is new
            # any other failure leaves the window to learn: the collection may hold a whole
            # corpus stamped moments ago (a migration's copy), which is no news to a watch
            return 0
        if self._failing:
            log.info("watch feed: the index answers again")
        self._failing = False
        if since == window_start:
            self._sweep_at = tick + self.lookback_ms / 2000
            self._known = found.window
        else:
            self._known = {pid: stamp for pid, stamp in (known or {}).items()
                           if stamp >= window_start} | found.window
        if known is None and self._swapped_at is not None:
            # the window learnt after a swap: the papers written since it are left unknown,
            # so the next poll publishes them (the copy's are stamped before the swap)
            swapped_at, self._swapped_at = self._swapped_at, None
            self._known = {pid: stamp for pid, stamp in self._known.items()
                           if stamp <= swapped_at}
        if not found.papers:
            return 0
        return await self.hub.publish_in_steps(found.papers, found.dense, embedder)


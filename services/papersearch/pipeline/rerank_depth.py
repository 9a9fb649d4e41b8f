"""Adaptive rerank depth: how many first-stage candidates one search sends to the reranker.

Under load the reranker's queue grows and a fixed window of ``search.rerank_top_n`` pairs
runs past the rerank budget, so whole searches fall back to unreranked results (all or
nothing). Instead, each search takes the deepest window of a ladder (``rerank_top_n``, then
``search.rerank_depth_steps``, then 0) whose predicted time fits ``search.rerank_target_s``
(unset: half the budget). The reranker is taken for a queue that works through pairs at some
rate: a call of d pairs sent while this gateway has q pairs in flight waits for about
(q + d) pairs' time. The time per pair is an exponentially weighted mean over this gateway's
recent calls of their wall time / (q + d) at their sending (a call cut by the budget counts as
taking all of it), and the prediction for a new call is that time x (pairs now in flight, or
chosen by searches still in their first stage, + d). So a burst shrinks the windows at once,
before slow answers come back (and before its first stages end: a window is counted from the
moment it is chosen). At depth 0 no call
measures the reranker any more, so one search per ``PROBE_S`` takes the smallest window to
look again (and, where a caller's deadline leaves less than a window is predicted to take, one
per ``PROBE_S`` sends it anyway: ``SearchPipeline._fits``). ``search.rerank_adaptive=false``
keeps the fixed window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from papersearch.settings import SearchSettings

PROBE_S = 1.0  # at depth 0: one search this often reranks the smallest window, to look again
ALPHA = 0.3  # weight of the newest call in the per-pair mean


class RerankDepth:
    def __init__(self, settings: SearchSettings, budget_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        top = settings.rerank_top_n
        steps = {d for d in settings.rerank_depth_steps if 0 < d < top}
        self.ladder = (top, *sorted(steps, reverse=True))  # deepest first
        self.adaptive = settings.rerank_adaptive
        self.target_s = settings.rerank_target_s or budget_s / 2
        self.clock = clock
        self.pair_s: float | None = None  # None: nothing measured yet
        self.in_flight = 0  # pairs this gateway has sent and not heard back about
        self.chosen = 0  # pairs of windows chosen by searches not at their rerank yet
        self._last_seen = -float("inf")

    def choose(self) -> int:
        """The window for the next search (0: do not rerank it), counted as chosen until the
        search sends it (``sent``) or gives it up (``dropped``)."""
        depth = self._depth(self.in_flight + self.chosen)
        self.chosen += depth
        return depth

    def _depth(self, queued: int) -> int:
        if not self.adaptive or self.pair_s is None:
            return self.ladder[0]
        for depth in self.ladder:
            if (queued + depth) * self.pair_s <= self.target_s:
                return depth
        return self.ladder[-1] if self.probe() else 0

    def probe(self) -> bool:
        """Whether this search is to look at the reranker again: no call has measured it for
        ``PROBE_S`` (none was sent: every window predicted too slow). It is marked as the
        probe; no other for PROBE_S."""
        if self.clock() - self._last_seen < PROBE_S:
            return False
        self._last_seen = self.clock()
        return True

    def sent(self, chosen: int, pairs: int) -> int:
        """A call of ``pairs`` (at most the ``chosen`` window: fewer candidates) goes out;
        returns the pairs in flight ahead of it."""
        self.chosen = max(0, self.chosen - chosen)
        ahead = self.in_flight
        self.in_flight += pairs
        return ahead

    def dropped(self, chosen: int) -> None:
        """A chosen window is not sent (no candidates, or the search was cancelled)."""
        self.chosen = max(0, self.chosen - chosen)

    def cancelled(self, pairs: int) -> None:
        """A call of ``pairs`` was given up (the search was cancelled): no measure."""
        self.in_flight = max(0, self.in_flight - pairs)

    def observe(self, depth: int, seconds: float, ahead: int = 0) -> None:
        """A call of ``depth`` pairs, sent with ``ahead`` in flight, took ``seconds`` (the
        budget, if it was cut)."""
        if depth <= 0:
            return
        self.in_flight = max(0, self.in_flight - depth)
        per_pair = seconds / (ahead + depth)
        self.pair_s = per_pair if self.pair_s is None else (
            ALPHA * per_pair + (1 - ALPHA) * self.pair_s)
        self._last_seen = self.clock()

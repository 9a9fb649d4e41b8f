"""Autoscaling on utilisation: each model replica measures the share of wall time it spends
computing, and a band with hysteresis turns the pool's total into a replica count.

Why not Serve's default (in-flight requests / a target): a request's stay in a replica is its
compute time, so the same load keeps fewer requests in flight on a faster machine, and a target
tuned on one machine scales early or late on the next. Utilisation is load as a share of the
replica's own capacity, whatever that capacity is: 0.6 means the same thing on a slow VM and on
a 16-core node. The Serve config names the policy (``autoscaling_config.policy``) and its band;
Serve's ``min_replicas``/``max_replicas`` and ``upscale_delay_s``/``downscale_delay_s`` still apply
around it.

This module imports nothing from papersearch: Serve's controller loads the policy by value.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

UTILIZATION = "utilization"  # the custom metric a replica reports (record_autoscaling_stats)

log = logging.getLogger("ray.serve")  # the controller's log (logs/serve/controller_*.log)


class Reading(NamedTuple):
    share: float  # busy share of the wall time over the meter's last smooth_s, at most 1
    busy_s: float  # the busy seconds since the previous read (a Prometheus counter's increment)


SMOOTH_S = 3.0  # what a report averages over: see BusyMeter


class BusyMeter:
    """Share of wall time at least one ``busy()`` block was running, over the reads of the last
    ``smooth_s`` seconds (at least the last read's interval).

    Overlapping blocks (a batch and a document call) count once, so the share is at most 1.
    Smoothed because Serve's controller stretches a replica's last report until its next push
    (every 10 s): a report of one 0.3 s interval that happened to be busy weighed ~40 % of the
    window and could scale a replica averaging 0.35 up. Called from the replica's event loop
    only (the replicas' ``record_autoscaling_stats`` are coroutines: Serve runs plain methods
    in a thread, beside the loop's ``busy()`` blocks).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 smooth_s: float = SMOOTH_S) -> None:
        self._clock = clock
        self._smooth_s = smooth_s
        self._active = 0
        self._span_start = 0.0  # when _active went from 0 to 1
        self._busy_s = 0.0  # closed spans since the last read
        self._last_read = clock()
        self._recent: deque[tuple[float, float]] = deque()  # (elapsed, busy) of recent reads

    @contextmanager
    def busy(self) -> Iterator[None]:
        if self._active == 0:
            self._span_start = self._clock()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._busy_s += self._clock() - self._span_start

    async def in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a worker thread, busy until the thread ends. A cancelled caller
        still waits for it (a thread cannot be stopped), so its call slot and its busy time
        cover the work that goes on rather than the next batch running beside it unseen."""
        with self.busy():
            running = asyncio.ensure_future(asyncio.to_thread(work, *args))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # its failure has no caller left to tell: taken as seen (papersearch.tasks.
                # forget; Serve's controller takes this module alone, without the package)
                running.add_done_callback(lambda done: done.cancelled() or done.exception())
                await asyncio.wait([running])
                raise

    def read(self) -> Reading:
        """The busy share over the last ``smooth_s`` and the busy seconds since the previous
        read (an open span counts up to now)."""
        now = self._clock()
        busy = self._busy_s
        if self._active:
            busy += now - self._span_start
            self._span_start = now
        elapsed = now - self._last_read
        self._busy_s = 0.0
        self._last_read = now
        self._recent.append((elapsed, busy))
        while len(self._recent) > 1 and (
                sum(e for e, _ in self._recent) - self._recent[0][0] >= self._smooth_s):
            self._recent.popleft()
        span = sum(e for e, _ in self._recent)
        share = sum(b for _, b in self._recent) / span if span > 0 else 0.0
        return Reading(min(1.0, share), busy)


@dataclass(frozen=True, slots=True)
class Band:
    """Add replicas when their mean utilisation goes above ``scale_up_above``, enough to bring
    it to ``target``; remove replicas when fewer would still run at most ``scale_down_below``.
    ``scale_down_below <= target < scale_up_above``, so neither move undoes the other."""

    scale_up_above: float = 0.5
    target: float = 0.4
    scale_down_below: float = 0.3

    def __post_init__(self) -> None:
        # below 1: a replica's share is at most 1 and the band asks for more only above it
        if not 0 < self.scale_down_below <= self.target < self.scale_up_above < 1:
            raise ValueError(
                "autoscaling band: need 0 < scale_down_below <= target < scale_up_above < 1, "
                f"got {self.scale_down_below}, {self.target}, {self.scale_up_above}")

    def replicas(self, total: float, current: int) -> int:
        """The count for ``total`` utilisation (the sum over replicas) on ``current`` replicas."""
        if current < 1:
            return current
        if total / current > self.scale_up_above:
            return max(current + 1, math.ceil(total / self.target))
        fewer = max(1, math.ceil(total / self.scale_down_below))
        return fewer if fewer < current else current


class UtilizationPolicy:
    """Serve custom autoscaling policy (a class: Serve builds it once with ``policy_kwargs``)."""

    def __init__(self, scale_up_above: float = 0.5, target: float = 0.4,
                 scale_down_below: float = 0.3) -> None:
        self.band = Band(scale_up_above, target, scale_down_below)
        self._asked: dict[str, int] = {}  # per deployment: the count last asked for

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """``ctx``: Serve's AutoscalingContext. A running replica without a report yet (just
        started) counts as idle; with no report at all the count stays."""
        current = ctx.current_num_replicas
        reported = (ctx.aggregated_metrics or {}).get(UTILIZATION) or {}
        # a report that is no number (NaN, None) is left out: the band's arithmetic raised on
        # it inside Serve's controller, which then skipped the application's update
        shares = [float(v) for v in reported.values()
                  if isinstance(v, int | float) and math.isfinite(v)]
        if current == 0 or not shares:
            return ctx.target_num_replicas, {}
        total = sum(shares)
        # against the replicas asked for, started or not: Serve compares the answer with its
        # target, so "stay" answered with the running count dropped a replica still starting
        asked = self.band.replicas(total, max(current, ctx.target_num_replicas))
        name = str(ctx.deployment_name)
        if asked != self._asked.get(name, current):  # a new wish: worth a line
            log.info("%s: utilisation %.2f over %d replicas asks for %d (band: up above %.2f, "
                     "target %.2f, down below %.2f)", name, total, current, asked,
                     self.band.scale_up_above, self.band.target, self.band.scale_down_below)
        self._asked[name] = asked
        return asked, {UTILIZATION: round(total, 3)}

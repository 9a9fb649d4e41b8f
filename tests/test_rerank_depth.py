"""Adaptive rerank depth (pipeline/rerank_depth.py): the ladder, the estimate, the probe."""

from __future__ import annotations

import pytest

from papersearch.pipeline.rerank_depth import ALPHA, PROBE_S, RerankDepth
from papersearch.settings import SearchSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock, **settings: object) -> RerankDepth:
    return RerankDepth(SearchSettings(rerank_top_n=30, rerank_depth_steps=[10, 20],
                                      **settings), budget_s=2.0, clock=clock)  # type: ignore[arg-type]


def peek(depth: RerankDepth) -> int:
    """The window a search would get now, not kept (that search never runs)."""
    window = depth.choose()
    depth.dropped(window)
    return window


def test_ladder_and_target() -> None:
    depth = policy(Clock())
    assert depth.ladder == (30, 20, 10)  # deepest first
    assert depth.target_s == 1.0  # half the budget
    assert policy(Clock(), rerank_target_s=0.3).target_s == 0.3


def test_window_shrinks_as_the_reranker_slows_and_grows_back() -> None:
    clock = Clock()
    depth = policy(clock)
    assert peek(depth) == 30  # nothing measured yet
    depth.observe(30, 0.6)  # 20 ms a pair: 30 pairs fit in 1 s
    assert peek(depth) == 30
    depth.observe(30, 1.8)  # 60 ms a pair now (queue wait included)
    assert depth.pair_s == pytest.approx(ALPHA * 0.06 + (1 - ALPHA) * 0.02)
    assert peek(depth) == 30  # 30 x 32 ms = 0.96 s still fits
    for _ in range(2):
        depth.observe(30, 1.8)
    assert peek(depth) == 20  # 30 x 46 ms > 1 s >= 20 x it
    for _ in range(10):
        depth.observe(10, 2.0)  # cut by the budget: 200 ms a pair
    assert peek(depth) == 0
    for _ in range(10):
        depth.observe(10, 0.1)  # 10 ms a pair: room again
    assert peek(depth) == 30


def test_at_depth_zero_one_search_per_interval_probes() -> None:
    clock = Clock()
    depth = policy(clock)
    depth.observe(10, 5.0)  # 0.5 s a pair: nothing fits
    assert peek(depth) == 0  # just measured: no probe yet
    clock.now += PROBE_S
    assert peek(depth) == 10  # the probe: the smallest window
    assert peek(depth) == 0  # only one per interval
    clock.now += PROBE_S / 2
    assert peek(depth) == 0
    depth.observe(10, 0.05)  # the probe found the reranker fast again
    for _ in range(10):
        depth.observe(10, 0.05)
    assert peek(depth) == 30


def test_fixed_policy_always_takes_the_whole_window() -> None:
    depth = policy(Clock(), rerank_adaptive=False)
    depth.observe(30, 60.0)
    assert peek(depth) == 30


def test_pairs_in_flight_shrink_the_window_before_any_answer() -> None:
    """A burst: calls already sent (and not answered) are queued ahead of the next one."""
    depth = policy(Clock())
    depth.observe(30, 0.6)  # 20 ms a pair
    first = depth.choose()
    assert first == 30
    ahead = [depth.sent(first, 30)]  # 30 pairs in flight: 30 more would wait 1.2 s
    second = depth.choose()
    assert second == 20  # (30 + 20) x 20 ms = 1 s
    ahead.append(depth.sent(second, 20))
    assert ahead == [0, 30] and peek(depth) == 0  # 50 pairs ahead: not even 10 fit
    depth.observe(30, 0.6, ahead[0])
    depth.cancelled(20)  # cancelled: no measure, no longer in flight
    assert depth.in_flight == 0 and peek(depth) == 30
    depth.observe(20, 1.0, 30)  # waited behind 30: 1 s for 50 pairs is still 20 ms a pair
    assert depth.pair_s == pytest.approx(0.02)


def test_a_burst_shrinks_the_windows_before_its_first_stages_end() -> None:
    """A window counted only once sent (after the search's first stage): searches arriving
    within one retrieval of each other all saw an empty queue and all took the deepest."""
    depth = policy(Clock())
    depth.observe(30, 0.6)  # 20 ms a pair
    burst = [depth.choose() for _ in range(4)]
    assert burst == [30, 20, 0, 0]  # 30 + 20 pairs fill the 1 s target
    depth.dropped(burst[0])  # that search found no candidates: its window goes back
    assert depth.chosen == 20 and depth.choose() == 30  # (20 + 30) x 20 ms fits again
    assert depth.sent(20, 7) == 0  # 7 candidates only: 7 pairs in flight, 30 still chosen
    assert (depth.chosen, depth.in_flight) == (30, 7)

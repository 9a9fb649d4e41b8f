"""The closed-loop benchmarks (throughput.py, feedback_shedding.py) count every failed search,
including those of the warm-up and the calls that end after the window: only answers are
confined to the measured window. Their callers ask what the JSON says they ask, and take turns
(engine_thread.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from papersearch.pipeline.query import SearchQuery, SearchResult
from tests.conftest import benchmark

throughput = benchmark("throughput")
feedback_shedding = benchmark("feedback_shedding")

FAILING_S = 0.3  # the searches fail this long (a service still coming up), then answer
MEASURED_S = 2.0  # the window after it: answers in it even on a loaded machine


class Client:
    """An AsyncSearchClient whose searches fail for FAILING_S after it was made."""

    def __init__(self, *_: Any, **__: Any) -> None:
        self.made = time.monotonic()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: Any) -> None:
        pass

    async def search(self, *_: Any, **__: Any) -> SearchResult:
        await asyncio.sleep(0.01)
        if time.monotonic() - self.made < FAILING_S:
            raise RuntimeError("UNAVAILABLE")
        return SearchResult((), False, {}, 0, 0, False)


class Meter:
    marks = [0.0]

    def start(self) -> None:
        self.marks = [0.0]

    def mark(self) -> None:
        self.marks.append(0.0)

    def stop(self) -> None:
        self.mark()

    def per_search_ms(self, _: int) -> dict[str, float]:
        return {}

    def missing(self, _: Sequence[str]) -> list[str]:
        return []

    def ray_per_search_ms(self, _: int) -> dict[str, float]:
        return {}


def unreadable(url: str) -> None:
    raise OSError(f"{url}: no metrics here")


def test_throughput_counts_the_warm_ups_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throughput, "AsyncSearchClient", Client)
    monkeypatch.setattr(throughput, "read_metrics", unreadable)
    level = throughput.saturate("127.0.0.1:1", "http://127.0.0.1:1/metrics", ["q"], False, 4,
                                throughput.Window(FAILING_S, MEASURED_S, 2), Meter())
    assert level["errors"] > 0 and level["completed"] > 0


def test_feedback_shedding_counts_the_warm_ups_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedback_shedding, "AsyncSearchClient", Client)
    level = asyncio.run(feedback_shedding.run_level("127.0.0.1:1", ["q"], None, 4,
                                                    warmup_s=FAILING_S, seconds=MEASURED_S))
    assert level["errors"] > 0 and level["qps"] > 0


def test_feedback_shedding_asks_what_its_json_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its JSON says rerank false; the requests had SearchQuery's default, rerank true."""
    asked: list[SearchQuery] = []

    class Asking(Client):
        async def search(self, query: SearchQuery, *_: Any, **__: Any) -> SearchResult:
            asked.append(query)
            await asyncio.sleep(0.001)
            return SearchResult((), False, {}, 0, 0, False)

    monkeypatch.setattr(feedback_shedding, "AsyncSearchClient", Asking)
    asyncio.run(feedback_shedding.run_level("127.0.0.1:1", ["q"], None, 2, warmup_s=0.0,
                                            seconds=0.05))
    assert asked and {q.rerank for q in asked} == {feedback_shedding.RERANK} == {False}


def test_engine_threads_loop_callers_take_turns() -> None:
    """engine_thread.py's ``loop`` way: a search that never awaits (the engine on the event
    loop) had the first caller run every search and the other seven none."""
    engine_thread = benchmark("engine_thread")

    async def on_loop(*_: Any) -> list[Any]:
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass
        return []

    result = asyncio.run(engine_thread.measure(on_loop, [("q", None)] * 80, 8))
    assert result["searches_per_worker"] == [10] * 8
    lag = result["loop_lag_ms"]
    assert lag["samples"] < engine_thread.MIN_LAG_SAMPLES and lag["p99"] is None


BURN = ("import sys, time\nstart = time.process_time()\n"
        "while time.process_time() - start < 0.4:\n    pass\nprint('burnt', flush=True)\n"
        "time.sleep(60)\n")


def test_the_cpu_meter_counts_processes_that_start_during_the_window() -> None:
    """The meter listed the processes once, at the window's start: a replica started (or
    restarted) in it went uncounted, and the served path's CPU per search read low, towards
    the target. Two children burn 0.4 s of CPU each in the window, one started after it
    began: both count (CPU time, whatever the machine's speed)."""
    import subprocess
    import sys

    def burner() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(0.5)\n" + BURN],
                                stdout=subprocess.PIPE, text=True)

    early = burner()
    meter = throughput.CpuMeter("papersearch")
    try:
        time.sleep(0.2)  # started, not yet burning
        meter.start()
        late = burner()
        try:
            for child in (early, late):
                assert child.stdout is not None and child.stdout.readline() == "burnt\n"
            meter.mark()
            meter.stop()
        finally:
            late.kill()
            late.wait()
    finally:
        early.kill()
        early.wait()
    served = sum(seconds for (role, _), seconds in meter.used.items() if role != "load_generator")
    assert served >= 0.75, meter.used
    assert meter.missing(("Gateway",)) == ["Gateway"]


def test_the_cpu_meter_names_an_idle_ray_worker_again_once_it_is_a_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray may hand an idle worker (ray::IDLE) a replica, which then retitles itself: named
    once, at first sight, its CPU stayed under "ray" in the per-role figures."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(60)"])
    try:
        meter = throughput.CpuMeter("papersearch")
        titles = iter([("ray", "ray::IDLE"), ("QueryEncoder", "QueryEncoder")])
        named = meter.role
        monkeypatch.setattr(meter, "role", lambda process: next(titles, ("QueryEncoder",
                            "QueryEncoder")) if process.pid == child.pid else named(process))
        meter.start()
        meter.stop()
    finally:
        child.kill()
        child.wait()
    assert [role for (role, _) in meter.used if role == "QueryEncoder"] == ["QueryEncoder"]
    assert meter.missing(("QueryEncoder",)) == []

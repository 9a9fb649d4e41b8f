"""``--calibrate``: the service's saturation QPS, measured closed-loop through the gateway just
before the run, so that a profile's rates can be fractions of it and the same command means the
same load on a slow VM, a laptop or a 16-core node.

A fixed number of requests is kept in flight for a short burst (each answer sends the next);
answers in the window after a warm-up second count. The burst is kept short (6 s by default),
so it measures the replicas running before it: the autoscaler needs its look-back average above
the band for ``upscale_delay_s`` and a replica's start-up before a new one serves (the counts
before and after the burst are in the report). A pause follows, until the burst has left the
look-back window and the counts are those before it (a burst long enough to move the
autoscaler is waited out), so the profile starts where it would have without calibration.

With ``--rerank`` the Reranker is the bottleneck, and the gateway's adaptive rerank depth
answers a burst that overloads it with smaller windows or none (pipeline/rerank_depth.py): the
answers per second would then count unreranked searches at the encoder's speed. Counting the
pairs reranked per second and reading them as full windows (``search.rerank_top_n``) was not
enough either: where the reranker is slower than the window's time target, the gateway keeps
smaller windows even at one search in flight, and a cold first call shrinks the next ones, so
the burst read half the real capacity and the calibrated high step never reached the
scale-up band. So a rerank burst reads the reranker's own time: its saturation QPS is the
reranked searches per second of rerank time (each answer's ``timings_ms["rerank"]``), over the
answers sent after the warm-up, at the windows the gateway chose for them (their mean is in the
report). That needs rerank calls that do not wait on each other: one search in flight, the
default with ``--rerank``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import count

import grpc

from papersearch.loadtest.profile import MAX_RATE_QPS, LoadProfile, Step
from papersearch.loadtest.runner import CLIENT_ERROR, Searcher, SearchOptions
from papersearch.pipeline.query import SearchQuery

WARMUP_S = 1.0
MAX_FRACTION = 1.5  # a calibrated step above this is a typo, not a load test
IN_FLIGHT = 64  # a burst's searches in flight, unless told
MAX_IN_FLIGHT = 1024
MAX_BURST_S = 300.0
MAX_SETTLE_S = 600.0
RERANK_IN_FLIGHT = 1  # the same with --rerank (see above)


@dataclass(frozen=True, slots=True)
class CalibrationOptions:
    in_flight: int = IN_FLIGHT
    burst_s: float = 6.0  # warm-up included (--calibrate-s's help says the default)
    settle_s: float = 20.0  # idle after the burst, before the profile (the same)
    rerank_window: int = 0  # > 0: a rerank burst, read by rerank time (see above); reported
    max_requests: int = 100_000  # the burst stops here too (--requests): bounded in count

    def __post_init__(self) -> None:
        if not 1 <= self.in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"--calibrate-in-flight must be within 1..{MAX_IN_FLIGHT}, got "
                             f"{self.in_flight}")
        if not WARMUP_S < self.burst_s <= MAX_BURST_S:
            raise ValueError(f"--calibrate-s must be > the {WARMUP_S:g} s warm-up and at most "
                             f"{MAX_BURST_S:g}, got {self.burst_s}")
        if not 0 <= self.settle_s <= MAX_SETTLE_S:
            raise ValueError(f"--calibrate-settle-s must be within 0..{MAX_SETTLE_S:g}, got "
                             f"{self.settle_s}")
        if self.max_requests < 1:
            raise ValueError(f"--requests must be >= 1, got {self.max_requests}")
        if self.rerank_window < 0:
            raise ValueError(f"the rerank window must be >= 0, got {self.rerank_window}")


@dataclass(frozen=True, slots=True)
class Burst:
    """What a closed-loop burst measured."""

    window_s: float  # the measured window (the burst minus the warm-up)
    ok: int  # OK answers that arrived inside the window
    errors: dict[str, int]  # error answers by status, whole burst
    rerank_window: int = 0  # > 0: a rerank burst (qps: reranked searches per rerank second)
    reranked: int = 0  # reranked answers sent after the warm-up that arrived inside the window
    pairs: int = 0  # candidates those answers had reranked
    rerank_s: float = 0.0  # the rerank time of those answers

    @property
    def qps(self) -> float:
        if self.rerank_window:
            return self.reranked / self.rerank_s if self.rerank_s > 0 else 0.0
        return self.ok / self.window_s


def fractions(profile: LoadProfile) -> LoadProfile:
    """Check that ``profile``'s rates read as fractions of the saturation QPS."""
    for i, step in enumerate(profile.steps, start=1):
        if step.rate_qps > MAX_FRACTION:
            raise ValueError(f"with --calibrate a step's rate is a fraction of the measured "
                             f"saturation QPS (at most {MAX_FRACTION:g}); step {i} asks for "
                             f"{step.rate_qps:g}")
    return profile


def scaled(profile: LoadProfile, qps: float) -> LoadProfile:
    """``profile`` with each fraction turned into a rate (QPS, 4 significant digits: 0.01
    resolution cut rerank rates near 1 QPS by 2 %, and made a step under 0.005 a pause)."""
    rates = [float(f"{step.rate_qps * qps:.4g}") for step in profile.steps]
    for i, (step, rate) in enumerate(zip(profile.steps, rates, strict=True), 1):
        if rate > MAX_RATE_QPS:
            raise ValueError(f"calibrated at {qps:g} QPS, step {i} ({step.rate_qps:g} of it) "
                             f"asks for {rate:g} QPS, past the load generator's "
                             f"{MAX_RATE_QPS:g}: give it a smaller fraction")
    return LoadProfile(tuple(Step(rate, step.duration_s)
                             for step, rate in zip(profile.steps, rates, strict=True)))


async def burst(searcher: Searcher, queries: Sequence[str], options: SearchOptions,
                deadline_s: float, calibration: CalibrationOptions,
                clock: Callable[[], float]) -> Burst:
    """Keep ``calibration.in_flight`` searches in flight for ``calibration.burst_s`` seconds,
    or until ``calibration.max_requests`` are sent: then the window ends where the cap came
    (the rate over the whole burst counted the idle rest too)."""
    start = clock()
    window_start, end = start + WARMUP_S, start + calibration.burst_s
    serial = count()
    capped_at: list[float] = []  # when the first worker found the cap reached
    answers: list[tuple[float, float, int, float]] = []  # OK: arrived, sent, depth, rerank s
    errors: dict[str, int] = {}

    async def worker() -> None:
        while clock() < end:
            if (n := next(serial)) >= calibration.max_requests:
                capped_at.append(clock())
                return
            query = SearchQuery(queries[n % len(queries)], options.top_k, options.mode,
                                options.rerank)
            sent = clock()
            try:
                result = await searcher.search(query, timeout_s=deadline_s)
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            except Exception:  # noqa: BLE001 (counted like the runner does)
                code = CLIENT_ERROR
            else:
                answers.append((clock(), sent, result.rerank_depth,
                                result.timings_ms.get("rerank", 0.0) / 1000))
                continue
            errors[code] = errors.get(code, 0) + 1

    await asyncio.gather(*(worker() for _ in range(calibration.in_flight)))
    cut = min([end, *capped_at])
    if cut <= window_start:
        raise ValueError(f"--requests {calibration.max_requests} were all sent in the burst's "
                         f"{WARMUP_S:g} s warm-up: raise --requests")
    counted = [a for a in answers if window_start <= a[0] <= cut]
    reranked = [a for a in counted if a[2] > 0 and a[1] >= window_start]
    return Burst(cut - window_start, len(counted), dict(sorted(errors.items())),
                 calibration.rerank_window, len(reranked), sum(a[2] for a in reranked),
                 sum(a[3] for a in reranked))


def grown(before: dict[str, int] | str, after: dict[str, int] | str) -> dict[str, list[int]]:
    """Deployments with more replicas running after the burst than before it ([before,
    after]): one that came up during the burst served part of it, and the measured QPS is no
    longer one replica's. Unknown (a count unreadable, an error's text) is not growth."""
    if isinstance(before, str) or isinstance(after, str):
        return {}
    return {name: [before.get(name, 0), running] for name, running in after.items()
            if running > before.get(name, 0)}


async def settle(read: Callable[[], Awaitable[dict[str, int] | str]], before: dict[str, int] | str,
                 pause_s: float, limit_s: float, poll_s: float) -> dict[str, int] | str:
    """Wait ``pause_s``, then until ``read()`` gives the counts ``before`` the burst again (at
    most ``limit_s`` more; not at all when they were unreadable); the last counts read."""
    await asyncio.sleep(pause_s)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit_s
    counts = await read()
    while isinstance(before, dict) and counts != before and loop.time() < give_up:
        await asyncio.sleep(poll_s)
        counts = await read()
    return counts

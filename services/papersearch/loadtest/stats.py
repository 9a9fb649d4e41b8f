"""Numbers from a run's records: per second, per profile step and overall.

Buckets are whole seconds from the start. A request counts as offered in the second it was
scheduled for; its answer (achieved QPS, latency, error) in the second it came back. Latency runs
from the actual send to the answer, and its percentiles are over OK answers only (an error's
latency says how fast it failed); the send lag (actual - scheduled send time) shows whether the
generator itself kept up, and the latency from the scheduled send (OK answers) is what a client
arriving on schedule waited, a lag included: the open-loop reading without coordinated
omission.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from papersearch.loadtest.monitor import ReplicaSample
from papersearch.loadtest.profile import LoadProfile
from papersearch.loadtest.runner import OK, Outcome, RequestRecord

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between the closest ranks, as
    numpy's default does: with x sorted and h = (n - 1) q / 100, the result is
    x[⌊h⌋] + (h - ⌊h⌋) (x[⌊h⌋ + 1] - x[⌊h⌋])."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 (None when there is no value), in milliseconds."""
    return {f"p{q}": percentile(latencies_s, q) * 1000 if latencies_s else None
            for q in PERCENTILES}


def _with_max(seconds: Sequence[float]) -> dict[str, float | None]:
    """latency_ms's percentiles and the largest, in milliseconds (None when there is none)."""
    return {**latency_ms(seconds), "max": max(seconds) * 1000 if seconds else None}


def _ok_latencies(records: Sequence[RequestRecord]) -> list[float]:
    return [r.latency_s for r in records if r.code == OK and r.latency_s is not None]


def _ok_waits(records: Sequence[RequestRecord]) -> list[float]:
    """OK answers' time from their scheduled send (the generator's lag included)."""
    return [r.ended_s - r.scheduled_s for r in records if r.code == OK and r.ended_s is not None]


def _errors(records: Sequence[RequestRecord]) -> dict[str, int]:
    counts = Counter(r.code for r in records
                     if r.outcome is Outcome.COMPLETED and r.code and r.code != OK)
    return dict(sorted(counts.items()))


@dataclass(frozen=True, slots=True)
class SecondRow:
    t_s: int
    offered: int  # scheduled in this second: the offered QPS
    sent: int
    ok: int  # OK answers that came back in this second: the achieved QPS
    reranked: int  # of them, reranked
    errors: dict[str, int]  # error answers that came back in this second, by status
    not_sent: int  # offered in this second but over the in-flight cap
    cancelled: int
    in_flight: int  # at the end of this second
    latency_ms: dict[str, float | None]  # of this second's OK answers
    replicas: dict[str, int] | None  # RUNNING replicas, the second's last good sample


def per_second(records: Sequence[RequestRecord], samples: Sequence[ReplicaSample],
               duration_s: float) -> list[SecondRow]:
    ends = [r.ended_s for r in records if r.ended_s is not None]
    seconds = max(1, math.ceil(max([duration_s, *ends])))

    def bucket(t: float) -> int:
        return min(max(int(t), 0), seconds - 1)

    offered = Counter(bucket(r.scheduled_s) for r in records)
    sent = Counter(bucket(r.started_s) for r in records if r.started_s is not None)
    not_sent = Counter(bucket(r.scheduled_s) for r in records if r.outcome is Outcome.NOT_SENT)
    ended: dict[int, list[RequestRecord]] = {}
    for r in records:
        if r.ended_s is not None:
            ended.setdefault(bucket(r.ended_s), []).append(r)
    replicas: dict[int, dict[str, int]] = {}
    for s in samples:  # in time order: the last good sample of a second wins
        if s.error is None:
            replicas[bucket(s.t_s)] = {name: d.running for name, d in s.deployments.items()}
    rows, in_flight = [], 0
    for t in range(seconds):
        done = ended.get(t, [])
        in_flight += sent[t] - len(done)
        rows.append(SecondRow(
            t_s=t, offered=offered[t], sent=sent[t],
            ok=sum(1 for r in done if r.code == OK),
            reranked=sum(1 for r in done if r.code == OK and r.reranked), errors=_errors(done),
            not_sent=not_sent[t],
            cancelled=sum(1 for r in done if r.outcome is Outcome.CANCELLED),
            in_flight=in_flight, latency_ms=latency_ms(_ok_latencies(done)),
            replicas=replicas.get(t),
        ))
    return rows


@dataclass(frozen=True, slots=True)
class StepRow:
    start_s: float
    rate_qps: float
    offered: int
    ok: int
    errors: int  # error answers plus requests not sent or cancelled
    # OK answers to this step's requests / its duration, whenever they came: equals the rate
    # also when a backlog carried them past the step (see completed_qps)
    achieved_qps: float
    p95_ms: float | None  # of this step's OK answers, from their send
    # OK answers that arrived within the step (whichever step sent them) / its duration: what
    # the service got through; below the rate, a backlog grew
    completed_qps: float
    # p95 of this step's OK answers from their scheduled send: a generator behind its schedule
    # (or at its in-flight cap) included, which p95_ms leaves out
    p95_from_schedule_ms: float | None


def per_step(records: Sequence[RequestRecord], profile: LoadProfile,
             window_s: float | None = None) -> list[StepRow]:
    """Requests grouped by the step they were scheduled in. A run cut short (``window_s``:
    --duration, or --requests reached) has the steps it reached, the last up to the cut."""
    window = profile.duration_s if window_s is None else window_s
    rows, start = [], 0.0
    for step in profile.steps:
        if start >= window:
            break
        end = min(start + step.duration_s, window)
        mine = [r for r in records if start <= r.scheduled_s < end]
        ok = sum(1 for r in mine if r.code == OK)
        completed = sum(1 for r in records if r.code == OK and r.ended_s is not None
                        and start <= r.ended_s < end)
        rows.append(StepRow(start, step.rate_qps, len(mine), ok, len(mine) - ok,
                            ok / (end - start), latency_ms(_ok_latencies(mine))["p95"],
                            completed / (end - start), latency_ms(_ok_waits(mine))["p95"]))
        start += step.duration_s
    return rows


@dataclass(frozen=True, slots=True)
class Summary:
    scheduled: int
    sent: int
    ok: int
    errors: dict[str, int]  # error answers by status
    not_sent: int
    cancelled: int
    duration_s: float  # the schedule's window
    elapsed_s: float  # until the last answer or cancellation
    offered_qps: float  # scheduled / duration
    achieved_qps: float  # OK answers / duration
    latency_ms: dict[str, float | None]  # p50, p95, p99, max of OK answers
    send_lag_ms: dict[str, float | None]  # p50, p95, p99, max of sent - scheduled time
    # p50, p95, p99, max of OK answers from their scheduled send: what a client arriving then
    # waited, a generator that fell behind (or its in-flight cap) included
    from_schedule_ms: dict[str, float | None]
    reranked_ratio: float | None  # of OK answers
    rerank_depths: dict[str, int]  # OK answers by the rerank window they used (0: not reranked)


def summarize(records: Sequence[RequestRecord], duration_s: float) -> Summary:
    """Overall numbers; raises AssertionError if the outcomes do not add up."""
    ok = sum(1 for r in records if r.code == OK)
    errors = _errors(records)
    not_sent = sum(1 for r in records if r.outcome is Outcome.NOT_SENT)
    cancelled = sum(1 for r in records if r.outcome is Outcome.CANCELLED)
    sent = sum(1 for r in records if r.started_s is not None)
    if ok + sum(errors.values()) + not_sent + cancelled != len(records) or \
            sent != len(records) - not_sent:
        raise AssertionError(
            f"load test accounting: {len(records)} scheduled != {ok} ok + {sum(errors.values())}"
            f" errors + {not_sent} not sent + {cancelled} cancelled (sent {sent})"
        )
    latencies = _ok_latencies(records)
    lags = [r.started_s - r.scheduled_s for r in records if r.started_s is not None]
    reranked = [r.reranked for r in records if r.code == OK]
    return Summary(
        scheduled=len(records), sent=sent, ok=ok, errors=errors, not_sent=not_sent,
        cancelled=cancelled, duration_s=duration_s,
        elapsed_s=max([duration_s, *(r.ended_s for r in records if r.ended_s is not None)]),
        offered_qps=len(records) / duration_s, achieved_qps=ok / duration_s,
        latency_ms=_with_max(latencies), send_lag_ms=_with_max(lags),
        from_schedule_ms=_with_max(_ok_waits(records)),
        reranked_ratio=sum(1 for r in reranked if r) / len(reranked) if reranked else None,
        rerank_depths={str(d): n for d, n in sorted(Counter(
            r.rerank_depth for r in records if r.code == OK and r.rerank_depth is not None
        ).items())},
    )

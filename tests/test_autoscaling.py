"""The utilisation meter and the autoscaling band (papersearch.autoscaling), with Serve's own
AutoscalingContext. The real policy in a real Serve app: test_serving's scale-up test."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from papersearch.autoscaling import UTILIZATION, Band, BusyMeter, UtilizationPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_reports_the_busy_share_between_reads() -> None:
    clock = Clock()
    meter = BusyMeter(clock, smooth_s=0)  # each read's own interval
    clock.now += 1.0
    with meter.busy():
        clock.now += 0.25
    clock.now += 0.75
    assert meter.read() == pytest.approx((0.25 / 2.0, 0.25))
    clock.now += 1.0
    assert meter.read() == (0.0, 0.0)  # nothing ran since


def test_meter_counts_overlapping_blocks_once_and_open_spans_up_to_now() -> None:
    clock = Clock()
    meter = BusyMeter(clock, smooth_s=0)
    with meter.busy():
        clock.now += 0.5
        with meter.busy():  # a document call beside a batch
            clock.now += 0.5
        clock.now += 0.5
        assert meter.read() == (1.0, 1.5)  # 1.5 s busy of 1.5 s, the span still open
        clock.now += 0.5
    clock.now += 0.5
    assert meter.read() == pytest.approx((0.5, 0.5))  # the open span's rest: 0.5 of 1.0 s


def test_a_report_averages_the_last_seconds_not_the_last_interval() -> None:
    """Serve's controller stretches a replica's last report until its next push (10 s): one
    0.3 s interval that happened to be busy, reported alone, weighed ~40 % of the look-back
    and scaled up a replica averaging 0.35."""
    clock = Clock()
    meter = BusyMeter(clock, smooth_s=3.0)
    shares = []
    for tick in range(20):  # 0.3 s reads; busy 0.1 s of each, the last one busy throughout
        busy = 0.3 if tick == 19 else 0.1
        with meter.busy():
            clock.now += busy
        clock.now += 0.3 - busy
        shares.append(meter.read())
    assert shares[10].share == pytest.approx(1 / 3)
    assert shares[-1].share == pytest.approx(0.4, abs=0.01)  # the last ~3 s, not 1.0
    assert shares[-1].busy_s == pytest.approx(0.3)  # the counter's increment stays the read's


def test_a_cancelled_call_stays_busy_until_its_thread_ends() -> None:
    """A cancelled caller (its client's deadline) cannot stop the ONNX thread: it waits for it,
    so the meter and the caller's call slot cover the work that still runs."""
    started, go, ended = threading.Event(), threading.Event(), threading.Event()

    def work() -> int:
        started.set()
        go.wait(10)
        ended.set()
        return 1

    async def main() -> None:
        meter = BusyMeter()
        call = asyncio.create_task(meter.in_thread(work))
        await asyncio.to_thread(started.wait, 10)
        call.cancel()
        await asyncio.sleep(0.05)
        assert not call.done() and meter.read().share > 0  # still busy: the thread runs
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert ended.is_set()
        assert meter.read().share > 0

    asyncio.run(main())


@pytest.mark.parametrize("values", [(0.6, 0.5, 0.55), (0.1, 0.4, 0.3), (0.3, 0.3, 0.9),
                                    (1.0, 0.5, 0.3)])  # a share is at most 1: never above 1
def test_band_refuses_values_that_would_undo_each_other(values: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="scale_down_below <= target < scale_up_above"):
        Band(*values)


def test_band_has_hysteresis() -> None:
    band = Band(scale_up_above=0.5, target=0.4, scale_down_below=0.3)
    assert band.replicas(0.45, 1) == 1  # inside the band: stay
    assert band.replicas(0.55, 1) == 2
    assert band.replicas(1.0, 1) == 3  # saturated: enough for 0.4 each
    assert band.replicas(0.55, 2) == 2  # 0.275 each after the step up: no step back
    assert band.replicas(0.35, 2) == 2  # one replica would run 0.35 > 0.3: stay
    assert band.replicas(0.25, 2) == 1
    assert band.replicas(0.5, 4) == 2  # several at once: two replicas at 0.25
    assert band.replicas(0.0, 1) == 1


STEPS = (0.15, 0.15, 0.8, 0.8, 0.8, 0.15, 0.15, 0.15)  # fractions of one replica's capacity


def measured_busy(rate_qps: float, capacity_qps: float, window_s: float = 2.0) -> float:
    """What one replica's BusyMeter reads over ``window_s`` of queries arriving evenly at
    ``rate_qps``, each busy for its compute, 1/capacity (on a fake clock; a query arriving
    while the last computes waits for it)."""
    clock = Clock()
    start, meter = clock.now, BusyMeter(clock, smooth_s=0)
    for arrival in range(round(rate_qps * window_s)):
        clock.now = max(clock.now, start + arrival / rate_qps)
        with meter.busy():
            clock.now += 1 / capacity_qps
    clock.now = max(clock.now, start + window_s)
    return meter.read().share


def decisions(capacity_qps: float, band: Band) -> list[tuple[float, int, int]]:
    """The band's decisions for a replica pool at the calibrated steps, on the utilisation
    each replica's meter reads (the step's load split evenly), summed."""
    replicas, changes = 1, []
    for fraction in STEPS:
        busy = replicas * measured_busy(fraction * capacity_qps / replicas, capacity_qps)
        decided = min(2, band.replicas(busy, replicas))
        if decided != replicas:
            changes.append((fraction, replicas, decided))
        replicas = decided
    return changes


@pytest.mark.parametrize("capacity_qps", [40.0, 220.0, 3000.0])
def test_a_calibrated_step_load_scales_once_each_way_at_any_machine_speed(
        capacity_qps: float) -> None:
    """Steps sized as fractions of the measured capacity read the same utilisation on a slow
    and a fast machine, so the band decides the same: up in the high step, down after it."""
    assert measured_busy(0.8 * capacity_qps, capacity_qps) == pytest.approx(0.8)
    assert decisions(capacity_qps, Band()) == [(0.8, 1, 2), (0.15, 2, 1)]


def context(current: int, utilization: dict[int, float] | None,
            target: int | None = None) -> AutoscalingContext:
    deployment = DeploymentID(name="QueryEncoder", app_name="papersearch")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=deployment) for i in range(current)]
    metrics: dict[str, dict[Any, float]] | None = None
    if utilization is not None:
        metrics = {UTILIZATION: {replicas[i]: value for i, value in utilization.items()}}
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="QueryEncoder", app_name="papersearch",
        current_num_replicas=current, target_num_replicas=current if target is None else target,
        running_replicas=replicas, total_num_requests=0.0, total_queued_requests=0.0,
        aggregated_metrics=metrics, raw_metrics=None, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4, policy_state={}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(min_replicas=1, max_replicas=4),
    )


def test_policy_sums_the_replicas_reports() -> None:
    policy = UtilizationPolicy(scale_up_above=0.5, target=0.4, scale_down_below=0.3)
    assert policy(context(1, {0: 0.7})) == (2, {UTILIZATION: 0.7})
    assert policy(context(2, {0: 0.1, 1: 0.05}))[0] == 1
    assert policy(context(2, {0: 0.45, 1: 0.45}))[0] == 2
    # a replica that has not reported yet counts as idle
    assert policy(context(2, {0: 0.2}))[0] == 1


def test_policy_logs_each_new_wish_once(caplog: pytest.LogCaptureFixture) -> None:
    policy = UtilizationPolicy()
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(3):
            policy(context(1, {0: 0.7}))
        policy(context(1, {0: 0.2}))
    # the policy's records only: a thread another test left (Ray Data's metrics poller) logs
    # too, and "ray.serve" is Serve's own logger as well
    assert [r.getMessage() for r in caplog.records
            if r.name == "ray.serve" and r.module == "autoscaling"] == [
        "QueryEncoder: utilisation 0.70 over 1 replicas asks for 2 (band: up above 0.50, "
        "target 0.40, down below 0.30)",
        "QueryEncoder: utilisation 0.20 over 1 replicas asks for 1 (band: up above 0.50, "
        "target 0.40, down below 0.30)"]


def test_a_replica_still_starting_is_not_dropped_while_the_others_are_in_band() -> None:
    """A third replica asked for and still starting (a worker pod coming up), two running at
    0.49: "stay" was answered with the running count (2), which Serve, comparing with its
    target (3), took as a scale-down and dropped the starting replica after its delay."""
    policy = UtilizationPolicy(scale_up_above=0.5, target=0.4, scale_down_below=0.3)
    assert policy(context(2, {0: 0.49, 1: 0.49}, target=3))[0] == 3
    assert policy(context(1, {0: 0.9}, target=2))[0] == 2  # not asked again, past the max
    assert policy(context(2, {0: 0.1, 1: 0.05}, target=3))[0] == 1  # the load did go


def test_the_replicas_report_on_their_event_loop() -> None:
    """Serve runs a plain method in a thread pool, beside the loop's busy() blocks: the
    meter's updates raced (busy time counted twice or lost)."""
    import inspect

    from papersearch.encoder.deployment import QueryEncoderDeployment
    from papersearch.reranker.deployment import RerankerDeployment

    for deployment in (QueryEncoderDeployment, RerankerDeployment):
        assert inspect.iscoroutinefunction(deployment.func_or_class.record_autoscaling_stats)


def test_policy_holds_without_reports() -> None:
    policy = UtilizationPolicy()
    assert policy(context(2, None, target=2))[0] == 2
    assert policy(context(1, {}, target=1))[0] == 1


def test_a_report_that_is_no_number_is_left_out() -> None:
    """NaN or None raised inside Serve's controller, which then skipped the application's
    update for as long as the report stayed in the look-back window."""
    policy = UtilizationPolicy()
    assert policy(context(2, {0: float("nan"), 1: 0.05}, target=2))[0] == 1  # the other's
    nothing: dict[int, Any] = {0: None, 1: float("inf")}
    assert policy(context(2, nothing, target=2))[0] == 2  # no number at all: the count stays

"""A run's results as JSON and as a one-screen text summary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from papersearch.loadtest.monitor import MetricKey, ReplicaSample, metric_name
from papersearch.loadtest.scaling import ScaleEvent, direction_changes, scale_events
from papersearch.loadtest.stats import SecondRow, StepRow, Summary

REPORT_FILE = "loadtest.json"  # in the run's --out folder, beside its plot

REQUESTS_METRIC = "ray_papersearch_requests_total"
SEARCHES_METRIC = "ray_papersearch_searches_total"


@dataclass(frozen=True, slots=True)
class LoadTestReport:
    run: dict[str, Any]  # what was asked for: target, profile, options, URLs, start time
    summary: Summary
    steps: list[StepRow]
    seconds: list[SecondRow]
    samples: list[ReplicaSample]
    metric_deltas: dict[MetricKey, float] | None  # None: metrics unreachable
    metrics_error: str | None

    @property
    def scale_events(self) -> list[ScaleEvent]:
        return scale_events(self.samples, [row.start_s for row in self.steps])

    def to_json(self) -> dict[str, Any]:
        failed = [s for s in self.samples if s.error is not None]
        events = self.scale_events
        return {
            "run": self.run,
            "summary": asdict(self.summary),
            "steps": [asdict(row) for row in self.steps],
            "seconds": [asdict(row) for row in self.seconds],
            "replicas": {
                "samples": [asdict(s) for s in self.samples],
                "failed": len(failed),
                "first_error": failed[0].error if failed else None,
                "range": replica_ranges(self.samples),
                "events": [asdict(event) for event in events],
                "max_turns_within_a_step": direction_changes(events),
            },
            "metrics": {
                "error": self.metrics_error,
                "deltas": None if self.metric_deltas is None else
                {metric_name(k): v for k, v in sorted(self.metric_deltas.items())},
            },
        }

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / REPORT_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def replica_ranges(samples: list[ReplicaSample]) -> dict[str, list[int]]:
    """Per deployment: [fewest, most, last] RUNNING replicas over the readable samples."""
    counts: dict[str, list[int]] = {}
    for sample in samples:
        if sample.error is None:
            for name, state in sample.deployments.items():
                counts.setdefault(name, []).append(state.running)
    return {name: [min(c), max(c), c[-1]] for name, c in sorted(counts.items())}


def server_side(deltas: dict[MetricKey, float]) -> tuple[dict[str, float], float | None]:
    """From metric deltas: requests by "method code", and the share of searches reranked."""
    requests: dict[str, float] = {}
    reranked: dict[str, float] = {}
    for (name, labels), value in deltas.items():
        tags = dict(labels)
        if name == REQUESTS_METRIC:
            key = f"{tags.get('method', '?')} {tags.get('code', '?')}"
            requests[key] = requests.get(key, 0.0) + value
        elif name == SEARCHES_METRIC:
            flag = tags.get("reranked", "?")
            reranked[flag] = reranked.get(flag, 0.0) + value
    total = sum(reranked.values())
    return dict(sorted(requests.items())), reranked.get("true", 0.0) / total if total else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_summary(report: LoadTestReport, files: list[Path]) -> str:
    s, run = report.summary, report.run
    errors = sum(s.errors.values())
    lines = [
        f"loadtest {run['target']}  profile {run['profile']} (rate:seconds)  "
        f"{s.duration_s:g} s window, {s.elapsed_s:.1f} s elapsed  "
        f"client retries {'on' if run.get('retry', True) else 'off'}",
        f"requests  scheduled {s.scheduled}  sent {s.sent}  ok {s.ok}  errors {errors}  "
        f"not sent (in-flight cap) {s.not_sent}  cancelled {s.cancelled}",
    ]
    calibration = run.get("calibration")
    if calibration:
        pairs = ""
        if "rerank_window" in calibration:
            searches = calibration["reranked"]
            mean = calibration["reranked_pairs"] / searches if searches else 0.0
            pairs = (f"{searches} searches reranked in {calibration['rerank_s']:g} s of rerank "
                     f"time, windows of {mean:.3g} pairs on average (configured "
                     f"{calibration['rerank_window']}), ")
        lines.append(
            f"calibrated saturation {calibration['saturation_qps']:g} QPS "
            f"({calibration['in_flight']} in flight, {pairs}{calibration['ok']} OK in "
            f"{calibration['window_s']:g} s; replicas before {calibration['replicas_before']}, "
            f"after {calibration['replicas_after']}, at the start "
            f"{calibration['replicas_at_start']}, {calibration['settle_s']:g} s later): "
            f"fractions {calibration['fractions']}")
    if s.errors:
        lines.append("errors    " + "  ".join(f"{code} {n}" for code, n in s.errors.items()))
    lat, lag, wait = s.latency_ms, s.send_lag_ms, s.from_schedule_ms
    lines += [
        f"latency   p50 {_ms(lat['p50'])}  p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  "
        f"max {_ms(lat['max'])} ms (OK answers)",
        f"send lag  p50 {_ms(lag['p50'])}  p99 {_ms(lag['p99'])}  max {_ms(lag['max'])} ms "
        "(actual - scheduled send: the generator kept up if small)",
        f"scheduled p50 {_ms(wait['p50'])}  p95 {_ms(wait['p95'])}  p99 {_ms(wait['p99'])}  "
        f"max {_ms(wait['max'])} ms (OK answers from their scheduled send, lag included)",
        f"qps       offered {s.offered_qps:.2f}  achieved {s.achieved_qps:.2f}  "
        f"reranked {_ratio(s.reranked_ratio)}",
    ]
    if len(report.steps) > 1:
        lines.append("steps     start_s  rate  offered     ok  errors  achieved  completed  "
                     "p95_ms")
        lines += [f"          {r.start_s:7g} {r.rate_qps:5g} {r.offered:8d} {r.ok:6d} "
                  f"{r.errors:7d} {r.achieved_qps:9.2f} {r.completed_qps:10.2f} "
                  f"{_ms(r.p95_ms):>7}" for r in report.steps]
    ranges = replica_ranges(report.samples)
    failed = [x for x in report.samples if x.error is not None]
    if ranges:
        lines.append("replicas  " + "  ".join(
            f"{name} {low}-{high} (last {last})" for name, (low, high, last) in ranges.items()))
    for event in report.scale_events:
        earlier = f"; or earlier, since {event.previous_s:.0f} s" if event.step_uncertain else ""
        lines.append(f"scaled    {event.deployment} {event.before}->{event.after} at "
                     f"{event.t_s:.0f} s (step {event.step} + {event.since_step_s:.0f} s"
                     f"{earlier})")
    if failed or not ranges:
        reason = failed[0].error if failed else "no sample"
        lines.append(f"replicas  {len(failed)}/{len(report.samples)} samples unreadable: {reason}")
    if report.metric_deltas is None:
        lines.append(f"server    metrics unreadable: {report.metrics_error}")
    else:
        requests, ratio = server_side(report.metric_deltas)
        counts = "  ".join(f"{key} {value:g}" for key, value in requests.items()) or "none"
        lines.append(f"server    requests {counts}  reranked {_ratio(ratio)}")
    lines.append("wrote     " + "  ".join(str(path) for path in files))
    return "\n".join(lines)

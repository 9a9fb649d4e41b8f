"""Scale events from the replica samples, placed on the load profile's steps: the evidence
that a deployment scaled up after a step, back down after it, and did not flap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from papersearch.loadtest.monitor import ReplicaSample


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    t_s: float  # first sample showing the new RUNNING count
    deployment: str
    before: int
    after: int
    step: int  # 1-based step of the profile the event fell in
    since_step_s: float  # seconds since that step began
    # the last readable sample before it: the change happened between previous_s and t_s
    previous_s: float
    # that sample fell in another step (or unreadable samples lay between the two): the
    # event's step is the latest it can be, not certain
    step_uncertain: bool


def scale_events(samples: Sequence[ReplicaSample], step_starts: Sequence[float]) -> (
    list[ScaleEvent]
):
    """Every change of a deployment's RUNNING replica count between readable samples. An
    event is placed at the sample that first shows it; where the sample before it was of
    another step, or unreadable ones came between, it may belong to an earlier step (a
    scale-up late in a low step, its samples failed, read as early in the high one)."""
    events: list[ScaleEvent] = []
    last: dict[str, int] = {}
    previous: ReplicaSample | None = None
    skipped = False  # unreadable samples since the previous readable one
    for sample in samples:
        if sample.error is not None:
            skipped = True
            continue
        for name, state in sample.deployments.items():
            before = last.get(name)
            if before is not None and previous is not None and state.running != before:
                step = _step_of(sample.t_s, step_starts)
                uncertain = skipped or _step_of(previous.t_s, step_starts) != step
                events.append(ScaleEvent(sample.t_s, name, before, state.running, step,
                                         sample.t_s - step_starts[step - 1], previous.t_s,
                                         uncertain))
            last[name] = state.running
        previous, skipped = sample, False
    return events


def _step_of(t_s: float, step_starts: Sequence[float]) -> int:
    return sum(1 for start in step_starts if start <= t_s) or 1


def direction_changes(events: Sequence[ScaleEvent]) -> dict[str, int]:
    """Per deployment: how often its replica count turned around (up then down or back)
    within one step; more than one in a step is flapping."""
    worst: dict[str, int] = {}
    turns: dict[tuple[str, int], int] = {}
    previous: dict[tuple[str, int], int] = {}
    for event in events:
        key = (event.deployment, event.step)
        direction = 1 if event.after > event.before else -1
        if previous.get(key, direction) != direction:
            turns[key] = turns.get(key, 0) + 1
        previous[key] = direction
        worst[event.deployment] = max(worst.get(event.deployment, 0), turns.get(key, 0))
    return worst

"""Load profiles: steps of a constant rate, and the send offsets they schedule."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, islice, takewhile

# A load test stops by itself: past these a profile is a typo (1e9 seconds, 1e300 QPS)
MAX_RATE_QPS = 10_000.0
MAX_PROFILE_S = 4 * 3600.0


@dataclass(frozen=True, slots=True)
class Step:
    """``rate_qps`` requests per second for ``duration_s`` seconds (rate 0: a pause)."""

    rate_qps: float
    duration_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_qps) and 0 <= self.rate_qps <= MAX_RATE_QPS):
            raise ValueError(f"a step's rate must be a number from 0 to {MAX_RATE_QPS:g} QPS, "
                             f"got {self.rate_qps}")
        if not (math.isfinite(self.duration_s) and 0 < self.duration_s <= MAX_PROFILE_S):
            raise ValueError(f"a step's duration must be > 0 and at most {MAX_PROFILE_S:g} "
                             f"seconds, got {self.duration_s}")


@dataclass(frozen=True, slots=True)
class LoadProfile:
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a load profile needs at least one step")
        if self.duration_s > MAX_PROFILE_S:
            raise ValueError(f"a load profile lasts at most {MAX_PROFILE_S:g} s, this one "
                             f"{self.duration_s:g} s")

    @classmethod
    def constant(cls, rate_qps: float, duration_s: float) -> LoadProfile:
        return cls((Step(rate_qps, duration_s),))

    @classmethod
    def parse_steps(cls, spec: str) -> LoadProfile:
        """``"2:30,8:60,2:90"``: 2 QPS for 30 s, then 8 QPS for 60 s, then 2 QPS for 90 s."""
        steps = []
        for i, part in enumerate(spec.split(","), start=1):
            rate, sep, duration = part.strip().partition(":")
            if not sep:
                raise ValueError(f"--steps item {i} {part.strip()!r}: expected RATE:SECONDS")
            try:
                steps.append(Step(float(rate), float(duration)))
            except ValueError as error:
                raise ValueError(f"--steps item {i} {part.strip()!r}: {error}") from None
        return cls(tuple(steps))

    @property
    def duration_s(self) -> float:
        return sum(step.duration_s for step in self.steps)

    @property
    def boundaries_s(self) -> list[float]:
        """Start offsets of every step after the first."""
        return list(accumulate(step.duration_s for step in self.steps[:-1]))

    def describe(self) -> str:
        return ",".join(f"{s.rate_qps:g}:{s.duration_s:g}" for s in self.steps)

    def offsets(self, poisson: bool = False, seed: int = 0) -> Iterator[float]:
        """Send offsets (seconds from the start), ascending: evenly spaced within each step
        (the first at the step's start), or Poisson arrivals at the step's rate."""
        rng = random.Random(seed)
        start = 0.0
        for step in self.steps:
            end = start + step.duration_s
            if step.rate_qps > 0:
                if poisson:
                    t = start + rng.expovariate(step.rate_qps)
                    while t < end:
                        yield t
                        t += rng.expovariate(step.rate_qps)
                else:
                    # the tolerance keeps 3 QPS x 1 s at 3 requests despite 1/3 rounding
                    count = math.ceil(step.rate_qps * step.duration_s - 1e-9)
                    yield from (start + i / step.rate_qps for i in range(count))
            start = end



@dataclass(frozen=True, slots=True)
class Schedule:
    offsets: list[float]  # send offsets, ascending
    duration_s: float  # the window they cover


def schedule(profile: LoadProfile, max_requests: int, max_duration_s: float | None = None,
             poisson: bool = False, seed: int = 0) -> Schedule:
    """The profile's send offsets cut at ``max_requests`` or ``max_duration_s`` (default: the
    profile's length), whichever comes first. Cut by the count, the window ends where the next
    request would have gone, or at the end of the last request's step if that comes first."""
    if max_requests < 1:
        raise ValueError(f"--requests must be >= 1, got {max_requests}")
    window = profile.duration_s if max_duration_s is None else max_duration_s
    if not 0 < window <= profile.duration_s:
        raise ValueError(f"--duration must be > 0 and at most the profile's "
                         f"{profile.duration_s:g} s, got {max_duration_s}")
    offsets = takewhile(lambda t: t < window, profile.offsets(poisson, seed))
    kept = list(islice(offsets, max_requests))
    following = next(offsets, None)
    if following is None:
        return Schedule(kept, window)
    # cut by the count: no later than the end of the last request's step (not across a pause)
    step_end = next(end for end in accumulate(s.duration_s for s in profile.steps)
                    if end > kept[-1])
    return Schedule(kept, min(following, step_end))

"""Per-query comparison of two runs on one judged set: wins, losses and a paired test.

Small judged sets (30 to 225 queries) make means noisy; the paired sign-flip permutation test
asks how often randomly swapping the two systems' scores per query gives a mean difference at
least as large as the one seen (two-sided).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from papersearch.evaluation.metrics import Report

K = TypeVar("K", bound=Hashable)
Runs = Mapping[str, Mapping[str, Report]]  # set name -> mode -> report

TIE = 1e-9
PERMUTATIONS = 20_000
SEED = 17


@dataclass(frozen=True, slots=True)
class Paired:
    mean_difference: float  # b - a
    wins: int  # queries where b scores higher
    losses: int
    ties: int
    p_value: float

    def to_dict(self) -> dict[str, float | int]:
        return {"mean_difference": round(self.mean_difference, 4), "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "p_value": round(self.p_value, 4)}


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> Paired:
    """``b`` against ``a``, per query (the queries both have); ValueError when they share none
    (runs of two different sets, say), which came back as 0 wins, 0 losses and p = 1: read as
    "no difference" where nothing was compared."""
    queries = sorted(a.keys() & b.keys())
    if not queries:
        raise ValueError(f"paired: the runs share no query ({len(a)} and {len(b)} queries): "
                         "nothing to compare")
    diff = np.array([b[q] - a[q] for q in queries], dtype=np.float64)
    observed = abs(diff.mean())
    signs = np.random.default_rng(SEED).choice((-1.0, 1.0), size=(PERMUTATIONS, len(diff)))
    extreme = int((np.abs((signs * diff).mean(axis=1)) >= observed - TIE).sum())
    return Paired(
        mean_difference=float(diff.mean()),
        wins=int((diff > TIE).sum()),
        losses=int((diff < -TIE).sum()),
        ties=int((np.abs(diff) <= TIE).sum()),
        p_value=(extreme + 1) / (PERMUTATIONS + 1),
    )


def against(before: Mapping[str, Mapping[str, Report]], after: Mapping[str, Mapping[str, Report]],
            names: Sequence[str], modes: Sequence[str], labels: tuple[str, str]
            ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per set of ``names`` and per mode of ``modes``: both runs' nDCG@10 (keyed by
    ``labels``, before and after) and ``after``'s per-query comparison against ``before``."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        table[name] = {}
        for mode in modes:
            a, b = before[name][mode], after[name][mode]
            table[name][mode] = {
                labels[0]: round(a.ndcg_at_10, 4), labels[1]: round(b.ndcg_at_10, 4),
                **paired(a.per_query_ndcg_at_10, b.per_query_ndcg_at_10).to_dict()}
    return table


def tuning_mean(runs: Runs, tuning: Sequence[str], mode: str = "hybrid") -> float:
    """Mean ``mode`` nDCG@10 over the tuning sets."""
    return sum(runs[n][mode].ndcg_at_10 for n in tuning) / len(tuning)


@dataclass(frozen=True, slots=True)
class TuningChoice(Generic[K]):
    """``eligible``: the candidates better than the baseline on the tuning sets' mean and no
    worse on any one of them (in the order given); ``chosen``: the best of those by that mean
    (None: none is); ``judged``: the one to judge on the held-out sets (the chosen one, else
    the best candidate by the mean)."""

    eligible: list[K]
    chosen: K | None
    judged: K


def choose_on_tuning(candidates: Mapping[K, Runs], baseline: K, tuning: Sequence[str],
                     mode: str = "hybrid") -> TuningChoice[K]:
    """What the tuning sets choose among ``candidates`` (the baseline among them) over
    ``baseline``: the held-out sets then judge it (``against``). ValueError when there is no
    candidate but the baseline: the callers judge ``judged`` against the baseline, and the
    baseline against itself judges nothing."""
    def mean(key: K) -> float:
        return tuning_mean(candidates[key], tuning, mode)

    base = candidates[baseline]
    others = [k for k in candidates if k != baseline]
    if not others:
        raise ValueError(f"choose_on_tuning: no candidate besides the baseline {baseline!r}: "
                         "nothing to choose")
    eligible = [k for k in others if mean(k) > mean(baseline) and all(
        candidates[k][n][mode].ndcg_at_10 >= base[n][mode].ndcg_at_10 for n in tuning)]
    chosen = max(eligible, key=mean, default=None)
    return TuningChoice(eligible, chosen, chosen if chosen is not None else max(others, key=mean))

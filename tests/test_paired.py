"""The paired comparison and the tuning-set choice (evaluation/paired.py) refuse inputs that
compare nothing, rather than report a tie or fail with a bare builtin error."""

from __future__ import annotations

import pytest

from papersearch.evaluation.metrics import Report
from papersearch.evaluation.paired import choose_on_tuning, paired


def report(ndcg: float) -> Report:
    return Report(ndcg, 0.0, 0.0, 1, 0, {"q": ndcg})


def test_runs_sharing_no_query_are_refused() -> None:
    """Two runs of different sets gave 0 wins, 0 losses, 0 ties and p = 1: "no difference"."""
    with pytest.raises(ValueError, match=r"share no query \(1 and 2 queries\)"):
        paired({"x": 1.0}, {"y": 0.0, "z": 0.5})
    with pytest.raises(ValueError, match="share no query"):
        paired({}, {})
    assert paired({"x": 0.2, "y": 0.1}, {"y": 0.4}).wins == 1  # the shared query only


def test_choosing_with_only_the_baseline_names_the_problem() -> None:
    """A grid holding only the baseline failed with "max() arg is an empty sequence"."""
    with pytest.raises(ValueError, match="no candidate besides the baseline 'base'"):
        choose_on_tuning({"base": {"cacm": {"hybrid": report(0.5)}}}, "base", ["cacm"])
    choice = choose_on_tuning({"base": {"cacm": {"hybrid": report(0.5)}},
                               "other": {"cacm": {"hybrid": report(0.4)}}}, "base", ["cacm"])
    assert (choice.eligible, choice.chosen, choice.judged) == ([], None, "other")

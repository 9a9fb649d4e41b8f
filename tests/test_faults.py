"""The pure numbers of benchmarks/faults.py: windows, p99, recovery, in-flight, RSS growth."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import benchmark

faults = benchmark("faults")
Request = faults.Request


def test_p99_matches_numpy() -> None:
    values = [float(v) for v in np.random.default_rng(3).exponential(50.0, 257)]
    assert faults.p99(values) == pytest.approx(float(np.percentile(values, 99)))
    assert faults.p99([]) is None
    assert faults.p99([7.0]) == 7.0


def test_windows_split_by_send_time_and_count_codes() -> None:
    requests = [
        Request(1.0, 1.0, 1.1, "OK"),  # before
        Request(9.9, 9.9, 10.5, "OK"),  # sent before the fault, answered after: before
        Request(10.0, 10.0, 10.2, "UNAVAILABLE"),
        Request(12.0, 12.0, 12.3, "OK", True),
        Request(14.0, 14.0, None, None),  # cancelled by the client at the end
        Request(21.0, None, None, None),  # not sent (in-flight cap): by its scheduled time
        Request(20.0, 20.0, 20.05, "OK"),
    ]
    windows = faults.split_windows(requests, fault=10.0, during_end=15.0)
    assert [len(windows[w]) for w in ("before", "during", "after")] == [2, 3, 2]
    during = faults.window_stats(windows["during"])
    assert during["sent"] == 3 and during["ok"] == 1
    assert during["failed"] == {"CANCELLED_BY_CLIENT": 1, "UNAVAILABLE": 1}
    assert during["p99_ms"] == pytest.approx(300.0)
    assert during["reranked"] == 1.0
    assert faults.window_stats(windows["after"])["not_sent"] == 1


def test_recovery_and_in_flight() -> None:
    requests = [
        Request(9.0, 9.0, 10.4, "OK"),
        Request(9.5, 9.5, 11.0, "INTERNAL"),
        Request(10.1, 10.1, 10.2, "UNAVAILABLE"),
        Request(10.5, 10.5, 13.0, "UNAVAILABLE"),
        Request(11.0, 11.0, 11.5, "OK"),
    ]
    assert faults.recovery(requests, 10.0) == {"first_ok_after_fault_s": 1.5,
                                               "last_failure_after_fault_s": 3.0}
    assert faults.in_flight_at(requests, 10.0) == {"INTERNAL": 1, "OK": 1}
    assert faults.recovery([Request(1.0, 1.0, 1.1, "OK")], 10.0) == {
        "first_ok_after_fault_s": None, "last_failure_after_fault_s": None}


def test_growth_over_the_last_span() -> None:
    samples = [(float(t), 100.0 + t / 10) for t in range(0, 601, 10)]
    # the sample 300 s before the end (130.0) to the end (160.0)
    assert faults.growth_pct(samples, 300.0) == pytest.approx(23.08, abs=0.01)
    assert faults.growth_pct(samples[:1], 300.0) is None


def test_table_row_pairs_the_clients() -> None:
    window = {"sent": 5, "failed": {}, "p99_ms": 12.0}
    result = {"clients": {"retry": {"all": window, "before": window},
                          "no_retry": {"all": window | {"failed": {"UNAVAILABLE": 2}},
                                       "before": window}},
              "recovery": {"a_s": 1.5, "b_s": None}, "acked_writes_lost": 0}
    row = faults.table_row("kill_x", result)
    assert row["requests"] == [5, 5] and row["failed"] == [{}, {"UNAVAILABLE": 2}]
    assert row["p99_ms"] == {"before": [12.0, 12.0]} and row["recovery_s"] == {"a_s": 1.5}
    assert faults.table_row("s", {"skipped": "why"}) == {"scenario": "s", "note": "why"}


def test_committed_messages_from_the_trailer() -> None:
    trailer = {"trailing_metadata": {"papersearch-committed-messages": "128"}}
    assert faults.committed_messages(trailer) == 128
    assert faults.committed_messages({"trailing_metadata": {}}) is None
    assert faults.committed_messages({"summary": {}}) is None

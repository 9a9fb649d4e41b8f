"""The metrics facade: counter increments are summed in the process and handed to Ray in one
record per series (real Prometheus export: test_serving's metrics test)."""

from __future__ import annotations

import time
from typing import Any, cast

from ray.util.metrics import Counter

from papersearch.telemetry import Metrics


class RecordingCounter:
    def __init__(self) -> None:
        self.records: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.records.append((value, tags))


def test_counter_increments_are_summed_per_series_until_flushed(monkeypatch: Any) -> None:
    import papersearch.telemetry as telemetry

    monkeypatch.setattr(telemetry, "COUNTER_FLUSH_S", 3600)  # only the flushes asked for here
    metrics = Metrics()
    counter = RecordingCounter()
    as_counter = cast(Counter, counter)
    for tags in ({"code": "OK"}, {"code": "OK"}, {"code": "INTERNAL"}):
        metrics._count(as_counter, 1.0, tags)
    metrics._count(as_counter, 0.5, {"code": "OK"})
    assert counter.records == []  # nothing handed over yet
    metrics.flush()
    assert sorted(counter.records, key=lambda r: r[1]["code"]) == [
        (1.0, {"code": "INTERNAL"}), (2.5, {"code": "OK"})]
    metrics.flush()
    assert len(counter.records) == 2  # nothing new: no record


def test_the_flusher_hands_counts_over_by_itself(monkeypatch: Any) -> None:
    import papersearch.telemetry as telemetry

    monkeypatch.setattr(telemetry, "COUNTER_FLUSH_S", 0.01)
    metrics = Metrics()
    counter = RecordingCounter()
    metrics._count(cast(Counter, counter), 3.0, {"deployment": "Reranker"})
    deadline = time.monotonic() + 5
    while not counter.records and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter.records == [(3.0, {"deployment": "Reranker"})]


class RefusingCounter(RecordingCounter):
    def inc(self, value: float, tags: dict[str, str]) -> None:
        raise ValueError("refused")


def test_one_refused_series_does_not_stop_the_others(monkeypatch: Any) -> None:
    """Ray's ValueError on one increment (0 was one) ended the flusher thread: every count
    after it piled up in the process and never reached Ray."""
    import papersearch.telemetry as telemetry

    monkeypatch.setattr(telemetry, "COUNTER_FLUSH_S", 3600)  # only the flush asked for here
    metrics = Metrics()
    good, bad = RecordingCounter(), RefusingCounter()
    metrics._count(cast(Counter, good), 0.0, {"n": "zero"})  # not even sent: Ray refuses 0
    metrics._count(cast(Counter, bad), 1.0, {"n": "bad"})
    metrics._count(cast(Counter, good), 2.0, {"n": "good"})
    metrics.flush()
    assert good.records == [(2.0, {"n": "good"})]

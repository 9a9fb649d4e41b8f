"""The load generator: percentiles, profiles, accounting, Serve status and Prometheus parsing
(fast), and tiny real runs against an in-process gateway over the real models (slow)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from papersearch import interrupts
from papersearch.cli import build_parser, main
from papersearch.encoder.runtime import Encoder
from papersearch.loadtest.calibrate import CalibrationOptions, burst, grown, scaled, settle
from papersearch.loadtest.command import build, check_target, is_loopback, split_target
from papersearch.loadtest.monitor import (
    DeploymentState,
    ReplicaMonitor,
    ReplicaSample,
    deployment_states,
    metric_deltas,
    metric_name,
    parse_metrics,
)
from papersearch.loadtest.profile import LoadProfile, Step, schedule
from papersearch.loadtest.queries import load_queries, queries_from_file
from papersearch.loadtest.report import server_side
from papersearch.loadtest.runner import Outcome, RequestRecord, Runner, SearchOptions
from papersearch.loadtest.scaling import direction_changes, scale_events
from papersearch.loadtest.stats import per_second, per_step, percentile, summarize
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.factory import open_index
from papersearch.pipeline.query import SearchQuery, SearchResult
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings
from tests.conftest import SAMPLE_CORPUS
from tests.gateway_helpers import LoopThread, Servers
from tests.module_stand_in import ModuleStandIn
from tests.ports import free_port

# --- percentiles -----------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [
    (0, 15.0),
    (40, 29.0),  # h = 4 * 0.40 = 1.6: 20 + 0.6 * (35 - 20)
    (50, 35.0),  # h = 2: the middle value
    (95, 48.0),  # h = 3.8: 40 + 0.8 * (50 - 40)
    (99, 49.6),  # h = 3.96: 40 + 0.96 * 10
    (100, 50.0),
])
def test_percentile_hand_computed(q: float, expected: float) -> None:
    assert percentile([50, 15, 40, 20, 35], q) == pytest.approx(expected)


def test_percentile_matches_numpy_and_edge_cases() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1.0) for _ in range(101)]
    for q in (1, 50, 90, 99, 99.9):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within 0..100"):
        percentile([1.0], 101)


# --- profiles and schedules ------------------------------------------------------------------


def test_parse_steps() -> None:
    profile = LoadProfile.parse_steps("2:30, 8:60,2:90")
    assert profile.steps == (Step(2, 30), Step(8, 60), Step(2, 90))
    assert profile.duration_s == 180 and profile.boundaries_s == [30, 90]
    assert profile.describe() == "2:30,8:60,2:90"


@pytest.mark.parametrize(("spec", "message"), [
    ("", "item 1 '': expected RATE:SECONDS"),
    ("2", "item 1 '2': expected RATE:SECONDS"),
    ("2:30,,", "item 2 '': expected RATE:SECONDS"),
    ("fast:30", "item 1 'fast:30': could not convert"),
    ("2:0", "item 1 '2:0': a step's duration must be > 0 and at most 14400 seconds"),
    ("-1:5", "a step's rate must be a number from 0 to 10000 QPS"),
    ("inf:5", "a step's rate must be a number from 0 to 10000 QPS"),
])
def test_parse_steps_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LoadProfile.parse_steps(spec)


def test_evenly_spaced_offsets() -> None:
    assert list(LoadProfile.constant(4, 2).offsets()) == [i / 4 for i in range(8)]
    assert len(list(LoadProfile.constant(3, 1).offsets())) == 3  # not 4 from 1/3 rounding
    # a pause step sends nothing; every step starts at its own start
    assert list(LoadProfile.parse_steps("2:1,0:1,1:2").offsets()) == [0, 0.5, 2, 3]


def test_poisson_offsets_are_seeded_and_stay_in_their_steps() -> None:
    profile = LoadProfile.parse_steps("50:10,0:5,100:10")
    offsets = list(profile.offsets(poisson=True, seed=3))
    assert offsets == list(profile.offsets(poisson=True, seed=3))
    assert offsets != list(profile.offsets(poisson=True, seed=4))
    assert offsets == sorted(offsets)
    assert not [t for t in offsets if 10 <= t < 15 or t >= 25]
    assert 400 < sum(1 for t in offsets if t < 10) < 600  # about 500
    assert 850 < sum(1 for t in offsets if t >= 15) < 1150  # about 1000


def test_schedule_is_cut_by_count_or_duration() -> None:
    profile = LoadProfile.constant(10, 60)
    by_count = schedule(profile, max_requests=25)
    assert len(by_count.offsets) == 25 and by_count.duration_s == pytest.approx(2.5)
    by_time = schedule(profile, max_requests=1000, max_duration_s=2)
    assert len(by_time.offsets) == 20 and by_time.duration_s == 2
    whole = schedule(LoadProfile.parse_steps("2:3,4:2"), max_requests=1000)
    assert len(whole.offsets) == 14 and whole.duration_s == 5
    with pytest.raises(ValueError, match="--requests must be >= 1"):
        schedule(profile, 0)
    with pytest.raises(ValueError, match="at most the profile's 60 s"):
        schedule(profile, 10, max_duration_s=61)


# --- queries ---------------------------------------------------------------------------------


def test_queries_from_file(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("graph neural networks\n\n  diffusion  \n\ngraph neural networks\n")
    lines = ["graph neural networks", "diffusion", "graph neural networks"]
    assert queries_from_file(path) == lines
    assert sorted(load_queries(path, SAMPLE_CORPUS, seed=1)) == sorted(lines)  # repeats kept
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="no non-blank line"):
        queries_from_file(path)
    with pytest.raises(FileNotFoundError, match="no such queries file"):
        queries_from_file(tmp_path / "missing.txt")


def test_default_queries_are_titles_and_phrases_shuffled_by_seed() -> None:
    queries = load_queries(None, SAMPLE_CORPUS, seed=5)
    assert queries == load_queries(None, SAMPLE_CORPUS, seed=5)
    assert queries != load_queries(None, SAMPLE_CORPUS, seed=6)
    assert len(queries) == len(set(queries)) > 1000  # 591 papers: a title and a phrase each
    assert any(q.startswith("FedWon") for q in queries)
    assert min(len(q.split()) for q in queries) >= 1
    assert sum(1 for q in queries if 3 <= len(q.split()) <= 8) > 500


# --- loopback guard --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["localhost:50051", "LOCALHOST:1", "127.0.0.1:50051",
                                    "127.8.9.10:80", "[::1]:50051"])
def test_loopback_targets(target: str) -> None:
    assert is_loopback(target)
    check_target(target, allow_remote=False)


def test_an_ipv6_target_needs_its_brackets() -> None:
    """gRPC reads "::1:50051" as a host without a port (443): the run went elsewhere than the
    loopback check had passed."""
    with pytest.raises(ValueError, match=r"brackets, \[::1\]:50051"):
        check_target("::1:50051", allow_remote=False)


@pytest.mark.parametrize("target", ["10.0.0.5:50051", "0.0.0.0:50051", "example.com:443",
                                    "[2001:db8::1]:50051"])
def test_remote_targets_need_allow_remote(target: str) -> None:
    assert not is_loopback(target)
    with pytest.raises(ValueError, match="pass --allow-remote"):
        check_target(target, allow_remote=False)
    check_target(target, allow_remote=True)


@pytest.mark.parametrize("target", ["localhost", ":50051", "host:http", "127.0.0.1:0",
                                    "127.0.0.1:70000", "[::1]", "[::1]50051", "[]:50051"])
def test_malformed_targets(target: str) -> None:
    with pytest.raises(ValueError, match="--target must be HOST:PORT"):
        is_loopback(target)


def test_a_url_or_an_unbracketed_v6_target_is_told_what_to_write() -> None:
    """`--target http://127.0.0.1:8000` (the curl examples' form) was told to put
    "http://127.0.0.1" in IPv6 brackets; `[::1]` (no port) got "[[:]:1]"."""
    with pytest.raises(ValueError, match=r"gRPC HOST:PORT without a scheme .*'http://127"):
        is_loopback("http://127.0.0.1:8000")
    with pytest.raises(ValueError, match=r"in brackets, \[::1\]:50051$"):
        is_loopback("::1:50051")
    assert split_target("[::1]:50051") == ("::1", 50051)
    assert split_target("localhost:1") == ("localhost", 1)


def test_cli_refuses_a_remote_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--target", "192.0.2.1:50051", "--rate", "1"]) == 2
    # Only our own lines: a library may log on first use (matplotlib's font cache did).
    ours = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("papersearch")]
    assert len(ours) == 1
    assert ours[0].startswith("papersearch: error: refusing to load-test 192.0.2.1:50051")


def test_cli_reports_bad_options_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--target", "127.0.0.1:1", "--steps", "2:1,x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "papersearch: error: --steps item 2 'x': expected RATE:SECONDS")


def test_cli_needs_a_reachable_target(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    args = ["loadtest", "--target", f"127.0.0.1:{free_port()}", "--rate", "1", "--duration",
            "1", "--queries", str(_queries_file(tmp_path)), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "did not answer a health check: UNAVAILABLE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_out_folder_holding_a_run(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    """The README's command wrote over the recorded run in docs/loadtest/encoder/1 (its
    summary.txt left beside a JSON it no longer matched): a folder holding a run is refused
    before anything is sent."""
    recorded = tmp_path / "encoder" / "1"
    recorded.mkdir(parents=True)
    (recorded / "loadtest.json").write_text("{}")
    args = ["loadtest", "--target", f"127.0.0.1:{free_port()}", "--rate", "1", "--duration",
            "1", "--queries", str(_queries_file(tmp_path)), "--out", str(recorded)]
    assert main(args) == 2
    assert f"--out {recorded} already holds a run" in capsys.readouterr().err
    assert (recorded / "loadtest.json").read_text() == "{}"


def test_options_default_from_settings(tmp_path: Path) -> None:
    settings = Settings(serve={"dashboard_host": "127.0.0.2", "dashboard_port": 18265,
                               "metrics_port": 18080, "app_name": "ps"})
    queries = str(_queries_file(tmp_path))
    test = build(settings, build_parser().parse_args(
        ["loadtest", "--target", "localhost:50051", "--rate", "2", "--queries", queries]))
    assert test.status_url == "http://127.0.0.2:18265" and test.app == "ps"
    assert test.metrics_url == "http://127.0.0.1:18080/metrics"
    assert test.schedule.duration_s == 30 and len(test.schedule.offsets) == 60
    assert test.options == SearchOptions(top_k=10, mode="hybrid", rerank=True)
    test = build(settings, build_parser().parse_args(
        ["loadtest", "--target", "localhost:50051", "--steps", "4:10,1:10", "--duration", "5",
         "--requests", "15", "--no-rerank", "--mode", "sparse", "--queries", queries]))
    assert len(test.schedule.offsets) == 15 and test.schedule.duration_s == 3.75
    assert test.options == SearchOptions(top_k=10, mode="sparse", rerank=False)
    assert test.retry is True
    test = build(settings, build_parser().parse_args(
        ["loadtest", "--target", "localhost:50051", "--rate", "2", "--queries", queries,
         "--no-retry"]))
    assert test.retry is False and test.describe()["retry"] is False


def test_calibrate_reads_rates_as_fractions(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    queries = str(_queries_file(tmp_path))
    args = ["loadtest", "--target", "localhost:50051", "--queries", queries, "--calibrate"]
    test = build(Settings(), build_parser().parse_args(
        [*args, "--steps", "0.15:30,0.8:60,0.15:90", "--calibrate-in-flight", "8"]))
    # --rerank (the default): the burst counts reranked pairs, the configured window to a search
    assert test.calibration == CalibrationOptions(in_flight=8, burst_s=6.0, settle_s=20.0,
                                                  rerank_window=30)
    unreranked = build(Settings(), build_parser().parse_args(
        [*args, "--steps", "0.15:30", "--no-rerank"]))
    assert unreranked.calibration == CalibrationOptions(in_flight=64, rerank_window=0)
    # by default one search in flight with --rerank (more shrink the gateway's rerank windows)
    reranked = build(Settings(), build_parser().parse_args([*args, "--steps", "0.15:30"]))
    assert reranked.calibration == CalibrationOptions(in_flight=1, rerank_window=30)
    rated = test.with_rates(220.0)
    assert rated.profile.describe() == "33:30,176:60,33:90" and rated.calibration is None
    assert len(rated.schedule.offsets) == 33 * 30 + 176 * 60 + 33 * 90
    assert scaled(LoadProfile.parse_steps("0.5:1"), 3.333).describe() == "1.667:1"
    # a small saturation rate keeps its steps: was 0.17 for 0.174, and 0.15 x 0.03 a pause
    assert scaled(LoadProfile.parse_steps("0.15:30,0.7:60"), 1.16).describe() == "0.174:30,0.812:60"
    assert scaled(LoadProfile.parse_steps("0.15:30"), 0.03).describe() == "0.0045:30"
    with pytest.raises(ValueError, match=r"calibrated at 8000 QPS, step 2 \(1.5 of it\) asks "
                       r"for 12000 QPS, past the load generator's 10000"):
        scaled(LoadProfile.parse_steps("0.1:30,1.5:60"), 8000.0)
    assert main([*args, "--steps", "20:30,200:60"]) == 2
    assert "with --calibrate a step's rate is a fraction of the measured saturation QPS " \
        "(at most 1.5); step 1 asks for 20" in capsys.readouterr().err
    assert main([*args, "--rate", "0.5", "--calibrate-s", "1"]) == 2
    assert "--calibrate-s must be > the 1 s warm-up" in capsys.readouterr().err
    plain = [a for a in args if a != "--calibrate"]
    assert main([*plain, "--rate", "5", "--calibrate-s", "3", "--calibrate-in-flight", "2"]) == 2
    assert "--calibrate-in-flight, --calibrate-s shape the calibration burst: add --calibrate" \
        in capsys.readouterr().err


def test_a_replica_that_came_up_during_the_burst_is_found() -> None:
    """A second replica running by the burst's end was only written to the report: its QPS
    (two replicas' for part of it) then sized every step as one replica's."""
    one = {"Gateway": 1, "QueryEncoder": 1}
    assert grown(one, {"Gateway": 1, "QueryEncoder": 2}) == {"QueryEncoder": [1, 2]}
    assert grown(one, one) == {} and grown(one, {"Gateway": 1, "QueryEncoder": 0}) == {}
    assert grown("status API unreachable", one) == {} and grown(one, "timed out") == {}


def test_a_calibration_burst_counts_answers_in_its_window() -> None:
    async def go(queries: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        return await burst(FakeSearcher(), queries, SearchOptions(), 1.0,
                           CalibrationOptions(in_flight=4, burst_s=1.5), loop.time)

    measured = asyncio.run(go(["ok"]))
    assert measured.window_s == 0.5 and measured.errors == {}
    assert measured.ok > 0 and measured.qps == measured.ok / 0.5
    measured = asyncio.run(go(["ok", "busy"]))
    assert measured.errors["RESOURCE_EXHAUSTED"] > 0 and measured.ok > 0


def test_a_rerank_burst_reads_the_rerankers_time() -> None:
    class Reranking:
        """"half": 10 candidates reranked in 10 ms; "skipped": none (the adaptive depth's 0);
        "cold": a first call that takes 1.2 s (sent in the warm-up, answered in the window)."""

        def __init__(self) -> None:
            self.calls = 0

        async def search(self, query: SearchQuery, timeout_s: float | None = None
                         ) -> SearchResult:
            self.calls += 1
            seconds = 1.2 if query.text == "cold" and self.calls == 1 else 0.01
            await asyncio.sleep(seconds)
            depth = 0 if query.text == "skipped" else 10
            return SearchResult((), depth > 0, {"rerank": seconds * 1000} if depth else {},
                                rerank_depth=depth)

    def go(queries: list[str], in_flight: int = 4) -> Any:
        async def measure() -> Any:
            loop = asyncio.get_running_loop()
            return await burst(Reranking(), queries, SearchOptions(rerank=True), 5.0,
                               CalibrationOptions(in_flight=in_flight, burst_s=1.5,
                                                  rerank_window=20), loop.time)
        return asyncio.run(measure())

    measured = go(["half"])
    assert 0 < measured.reranked <= measured.ok and measured.pairs == 10 * measured.reranked
    assert measured.qps == pytest.approx(measured.reranked / measured.rerank_s)
    assert measured.qps == pytest.approx(100, rel=0.2)  # one search per 10 ms of rerank time
    measured = go(["half", "skipped"])  # unreranked answers are not the reranker's capacity
    assert 0 < measured.reranked < measured.ok
    assert measured.qps == pytest.approx(100, rel=0.2)
    measured = go(["cold", "half"], in_flight=1)  # the cold call's 1.2 s is not counted
    assert measured.ok > measured.reranked > 0
    assert measured.qps == pytest.approx(100, rel=0.2)
    assert go(["skipped"]).qps == 0  # nothing reranked: nothing measured
    with pytest.raises(ValueError, match="rerank window must be >= 0"):
        CalibrationOptions(rerank_window=-1)


def test_settling_waits_for_the_counts_before_the_burst() -> None:
    before = {"QueryEncoder": 1, "Reranker": 1}

    def reader(counts: list[dict[str, int] | str]) -> Any:
        async def read() -> dict[str, int] | str:
            return counts.pop(0) if len(counts) > 1 else counts[0]
        return read

    scaled_up = {"QueryEncoder": 1, "Reranker": 2}
    assert asyncio.run(settle(reader([scaled_up, scaled_up, before]), before, 0, 5, 0)) == before
    # a limit: the counts as they are then
    assert asyncio.run(settle(reader([scaled_up]), before, 0, 0.05, 0.01)) == scaled_up
    # unreadable before the burst: nothing to wait for
    assert asyncio.run(settle(reader([scaled_up]), "unreachable", 0, 5, 0)) == scaled_up


# --- the runner's accounting, with a fake client ---------------------------------------------


class FakeSearcher:
    """Answers by query text: "ok" quickly, "busy" with RESOURCE_EXHAUSTED, "hang" never."""

    async def search(self, query: SearchQuery, timeout_s: float | None = None) -> SearchResult:
        if query.text == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(0.01)
        if query.text == "busy":
            raise grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details="full")
        return SearchResult((), reranked=query.rerank, timings_ms={})


def _run_fake(queries: list[str], offsets: list[float], max_in_flight: int,
              deadline_s: float = 0.2) -> list[RequestRecord]:
    async def go() -> list[RequestRecord]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        runner = Runner(FakeSearcher(), queries, SearchOptions(rerank=True), deadline_s,
                        max_in_flight, lambda: loop.time() - start)
        return await runner.run(offsets)

    return asyncio.run(go())


def test_runner_accounting_adds_up() -> None:
    # queries cycle: ok, busy, hang, ok, busy, hang, ...; two "hang"s hold the cap of 2
    offsets = [i * 0.05 for i in range(12)]
    records = _run_fake(["ok", "busy", "hang"], offsets, max_in_flight=2)
    assert [r.scheduled_s for r in records] == offsets
    summary = summarize(records, duration_s=0.6)
    assert (summary.scheduled, summary.ok, summary.errors) == (12, 2, {"RESOURCE_EXHAUSTED": 2})
    assert summary.cancelled == 2 and summary.not_sent == 6 and summary.sent == 6
    assert summary.reranked_ratio == 1.0
    assert summary.send_lag_ms["p50"] >= 0  # sends never precede their schedule
    assert [r.outcome for r in records[:6]] == [Outcome.COMPLETED, Outcome.COMPLETED,
                                               Outcome.CANCELLED, Outcome.COMPLETED,
                                               Outcome.COMPLETED, Outcome.CANCELLED]
    assert all(r.outcome is Outcome.NOT_SENT and r.started_s is None for r in records[6:])

    rows = per_second(records, [], duration_s=0.6)
    assert len(rows) == 2  # the cancellations land in second 1
    assert sum(r.offered for r in rows) == 12 and sum(r.sent for r in rows) == 6
    assert sum(r.ok for r in rows) == 2 and sum(r.not_sent for r in rows) == 6
    assert sum(r.cancelled for r in rows) == 2 and rows[-1].in_flight == 0
    assert sum(sum(r.errors.values()) for r in rows) == 2
    assert rows[0].in_flight == 2  # the two hanging requests


def test_the_runner_runs_to_the_end_of_the_profile() -> None:
    """A trailing pause (--steps 10:1,0:3, to watch a scale-down) ended at the last send: the
    replica monitor stopped 3 s early while the report counted the whole window."""
    async def go() -> tuple[float, list[RequestRecord]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        runner = Runner(FakeSearcher(), ["ok"], SearchOptions(), 1.0, 8,
                        lambda: loop.time() - start)
        records = await runner.run([0.0, 0.05], until=0.6)
        return loop.time() - start, records

    took, records = asyncio.run(go())
    assert took >= 0.6 and all(r.outcome is Outcome.COMPLETED for r in records)


def test_summary_refuses_records_that_do_not_add_up() -> None:
    broken = [RequestRecord(0.0, Outcome.COMPLETED, 0.0, 0.1, code=None)]
    with pytest.raises(AssertionError, match="1 scheduled != 0 ok"):
        summarize(broken, duration_s=1)


def test_per_step_rates_of_a_run_cut_short() -> None:
    """--duration 40 on 10:30,40:60,10:90: two steps reached, the second for 10 s; every
    request answered, each step achieved its rate."""
    profile = LoadProfile.parse_steps("10:30,40:60,10:90")
    cut = schedule(profile, max_requests=100_000, max_duration_s=40)
    records = [RequestRecord(t, Outcome.COMPLETED, t, t + 0.01, "OK") for t in cut.offsets]
    rows = per_step(records, profile, cut.duration_s)
    assert [(r.start_s, r.offered, r.ok) for r in rows] == [(0.0, 300, 300), (30.0, 400, 400)]
    assert [r.achieved_qps for r in rows] == pytest.approx([10.0, 40.0])
    assert len(per_step(records, profile)) == 3  # the whole profile, as without a cut


def test_a_step_the_service_fell_behind_in_says_so() -> None:
    """A service that answers 50 a second, offered 60 for 10 s: every request answered in the
    end, so achieved_qps read 60 and the step's p95 (from each send) stayed low while the
    backlog grew. completed_qps counts answers within the step; p95_from_schedule the wait."""
    profile = LoadProfile.parse_steps("60:10")
    records, free = [], 0.0
    for t in schedule(profile, max_requests=100_000, max_duration_s=None).offsets:
        started = max(t, free - 0.01)  # the client sends on time, the service queues
        free = max(t, free) + 0.02  # FIFO, 20 ms each
        records.append(RequestRecord(t, Outcome.COMPLETED, started, free, "OK"))
    [row] = per_step(records, profile)
    assert row.achieved_qps == pytest.approx(60.0)
    assert row.completed_qps == pytest.approx(50.0, abs=0.5)
    assert row.p95_from_schedule_ms is not None and row.p95_from_schedule_ms > 1000


def test_per_second_buckets_by_schedule_and_by_completion() -> None:
    records = [
        RequestRecord(0.2, Outcome.COMPLETED, 0.2, 1.3, "OK", True),  # offered 0, done 1
        RequestRecord(0.5, Outcome.COMPLETED, 0.5, 0.6, "OK", False),
        RequestRecord(0.9, Outcome.COMPLETED, 0.9, 0.95, "UNAVAILABLE"),
        RequestRecord(1.1, Outcome.NOT_SENT),
        RequestRecord(1.5, Outcome.CANCELLED, 1.5, 2.7),
    ]
    samples = [
        ReplicaSample(0.1, {"QueryEncoder": DeploymentState(1, 1, "HEALTHY")}),
        ReplicaSample(0.9, {"QueryEncoder": DeploymentState(2, 2, "UPSCALING")}),
        ReplicaSample(1.5, {}, "connection refused"),
    ]
    rows = per_second(records, samples, duration_s=2)
    assert [r.t_s for r in rows] == [0, 1, 2]  # the cancellation at 2.7 adds a third second
    assert [r.offered for r in rows] == [3, 2, 0]
    assert [r.ok for r in rows] == [1, 1, 0]
    assert rows[0].errors == {"UNAVAILABLE": 1} and rows[1].errors == {}
    assert [r.not_sent for r in rows] == [0, 1, 0]
    assert [r.cancelled for r in rows] == [0, 0, 1]
    assert [r.in_flight for r in rows] == [1, 1, 0]
    assert rows[0].latency_ms["p50"] == pytest.approx(100.0)
    assert rows[1].latency_ms["p99"] == pytest.approx(1100.0)
    assert rows[2].latency_ms == {"p50": None, "p95": None, "p99": None}
    assert rows[0].replicas == {"QueryEncoder": 2} and rows[1].replicas is None
    summary = summarize(records, duration_s=2)
    assert summary.reranked_ratio == 0.5 and summary.elapsed_s == pytest.approx(2.7)
    assert summary.latency_ms["max"] == pytest.approx(1100.0)
    assert summary.latency_ms["p50"] == pytest.approx(600.0)  # halfway between 100 and 1100
    assert summary.send_lag_ms == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    assert summary.offered_qps == 2.5 and summary.achieved_qps == 1.0


# --- Serve status and Prometheus metrics -----------------------------------------------------

SERVE_STATUS: dict[str, Any] = {  # GET /api/serve/applications/ (Ray 2.60), trimmed
    "controller_info": {"node_id": "n1", "actor_id": "a1"},
    "proxy_location": "Disabled",
    "proxies": {},
    "target_capacity": None,
    "applications": {
        "papersearch": {
            "name": "papersearch", "route_prefix": None, "docs_path": None, "status": "RUNNING",
            "message": "", "last_deployed_time_s": 1754000000.0, "source": "declarative",
            "external_scaler_enabled": False,
            "deployments": {
                "QueryEncoder": {
                    "name": "QueryEncoder", "status": "UPSCALING",
                    "status_trigger": "AUTOSCALING", "message": "",
                    "deployment_config": {"name": "QueryEncoder"}, "target_num_replicas": 3,
                    "required_resources": {"CPU": 0.5},
                    "replicas": [
                        {"replica_id": "e1", "state": "RUNNING", "start_time_s": 1754000001.0},
                        {"replica_id": "e2", "state": "RUNNING", "start_time_s": 1754000040.0},
                        {"replica_id": "e3", "state": "STARTING", "start_time_s": 1754000060.0},
                    ],
                },
                "Reranker": {
                    "name": "Reranker", "status": "DOWNSCALING",
                    "status_trigger": "AUTOSCALING", "message": "",
                    "deployment_config": {"name": "Reranker"}, "target_num_replicas": 1,
                    "required_resources": {"CPU": 1},
                    "replicas": [
                        {"replica_id": "r1", "state": "RUNNING", "start_time_s": 1754000001.0},
                        {"replica_id": "r2", "state": "STOPPING", "start_time_s": 1754000030.0},
                    ],
                },
            },
        },
    },
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1 idioms inside Ray
def test_the_serve_status_literal_has_ray_s_schema() -> None:
    from ray.serve.schema import ServeInstanceDetails

    ServeInstanceDetails.model_validate(SERVE_STATUS)


def test_deployment_states_from_serve_status() -> None:
    states = deployment_states(SERVE_STATUS, "papersearch")
    assert states == {
        "QueryEncoder": DeploymentState(running=2, target=3, status="UPSCALING"),
        "Reranker": DeploymentState(running=1, target=1, status="DOWNSCALING"),
    }
    with pytest.raises(LookupError, match="no Serve application 'other' .running: papersearch"):
        deployment_states(SERVE_STATUS, "other")
    with pytest.raises(LookupError, match="running: none"):
        deployment_states({"applications": {}}, "papersearch")


def test_monitor_skips_the_ticks_a_slow_poll_overran(monkeypatch: pytest.MonkeyPatch) -> None:
    """One poll taking 3.5 samples' time is followed by the next tick, not by the ticks it
    overran back to back (on a fake clock)."""
    from papersearch.loadtest import monitor as monitor_module

    now = [0.0]
    started: list[float] = []

    class Enough(Exception):
        pass

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    monitor = ReplicaMonitor("http://127.0.0.1:1", "papersearch", 0.1, lambda: now[0])

    async def sample() -> ReplicaSample:
        if len(started) == 6:
            raise Enough
        started.append(now[0])
        now[0] += 0.35 if len(started) == 2 else 0.01
        return ReplicaSample(started[-1], {})

    monkeypatch.setattr(monitor_module, "asyncio", ModuleStandIn(asyncio, sleep=sleep))
    monkeypatch.setattr(monitor, "sample", sample)
    with pytest.raises(Enough):
        asyncio.run(monitor.run())
    assert started == pytest.approx([0.0, 0.1, 0.5, 0.6, 0.7, 0.8])


def test_monitor_records_an_unreachable_status_api() -> None:
    monitor = ReplicaMonitor(f"http://127.0.0.1:{free_port()}", "papersearch", 1.0, lambda: 0.0)
    sample = asyncio.run(monitor.sample())
    assert sample.deployments == {} and sample.error is not None
    assert "/api/serve/applications/" in sample.error and "refused" in sample.error.lower()


def _ray_labels(worker: str) -> str:
    return (f'Component="core_worker",NodeAddress="127.0.0.1",SessionName="session_1",'
            f'Version="2.60.0",WorkerId="{worker}",otel_scope_name="ray"')


def _metrics_text(ok_w1: float, ok_w2: float, reranked: float, batch_count: float,
                  in_flight: float) -> str:
    return f"""\
# HELP ray_papersearch_requests_total Requests by method and status code.
# TYPE ray_papersearch_requests_total counter
ray_papersearch_requests_total{{{_ray_labels("w1")},code="OK",method="Search"}} {ok_w1}
ray_papersearch_requests_total{{{_ray_labels("w2")},code="OK",method="Search"}} {ok_w2}
ray_papersearch_requests_total{{{_ray_labels("w1")},code="DEADLINE_EXCEEDED",method="Search"}} 1
# HELP ray_papersearch_searches_total Searches by whether the rerank stage ran.
# TYPE ray_papersearch_searches_total counter
ray_papersearch_searches_total{{{_ray_labels("w1")},reranked="true"}} {reranked}
ray_papersearch_searches_total{{{_ray_labels("w1")},reranked="false"}} 10
# HELP ray_papersearch_batch_size Items per batch.
# TYPE ray_papersearch_batch_size histogram
ray_papersearch_batch_size_bucket{{{_ray_labels("w3")},deployment="QueryEncoder",le="4.0"}} 5
ray_papersearch_batch_size_bucket{{{_ray_labels("w3")},deployment="QueryEncoder",le="+Inf"}} \
{batch_count}
ray_papersearch_batch_size_count{{{_ray_labels("w3")},deployment="QueryEncoder"}} {batch_count}
ray_papersearch_batch_size_sum{{{_ray_labels("w3")},deployment="QueryEncoder"}} 40
# HELP ray_papersearch_in_flight Requests in flight.
# TYPE ray_papersearch_in_flight gauge
ray_papersearch_in_flight{{{_ray_labels("w3")},deployment="QueryEncoder",replica="a"}} {in_flight}
ray_papersearch_in_flight{{{_ray_labels("w4")},deployment="QueryEncoder",replica="b"}} 1
# HELP ray_tasks Ray's own metric, not ours.
# TYPE ray_tasks gauge
ray_tasks{{{_ray_labels("w1")},State="RUNNING"}} 7
"""


def test_metrics_are_summed_over_ray_labels_and_differenced() -> None:
    start = parse_metrics(_metrics_text(10, 5, 0, 8, 3))
    end = parse_metrics(_metrics_text(30, 20, 25, 12, 2))
    assert start.values[("ray_papersearch_requests_total",
                         (("code", "OK"), ("method", "Search")))] == 15
    assert not [k for k in start.values if not k[0].startswith("ray_papersearch_")]
    deltas = {metric_name(k): v for k, v in metric_deltas(start, end).items()}
    assert deltas == {
        'ray_papersearch_requests_total{code="OK",method="Search"}': 35.0,
        'ray_papersearch_requests_total{code="DEADLINE_EXCEEDED",method="Search"}': 0.0,
        'ray_papersearch_searches_total{reranked="true"}': 25.0,
        'ray_papersearch_searches_total{reranked="false"}': 0.0,
        'ray_papersearch_batch_size_bucket{deployment="QueryEncoder",le="4.0"}': 0.0,
        'ray_papersearch_batch_size_bucket{deployment="QueryEncoder",le="+Inf"}': 4.0,
        'ray_papersearch_batch_size_count{deployment="QueryEncoder"}': 4.0,
        'ray_papersearch_batch_size_sum{deployment="QueryEncoder"}': 0.0,
        'ray_papersearch_in_flight{deployment="QueryEncoder"}': 3.0,  # a gauge: its end value
    }
    requests, reranked_ratio = server_side(metric_deltas(start, end))
    assert requests == {"Search DEADLINE_EXCEEDED": 0.0, "Search OK": 35.0}
    assert reranked_ratio == 1.0
    # a replica gone by the end (w2: its series no longer exported) takes nothing off
    gone = parse_metrics("\n".join(line for line in _metrics_text(30, 20, 25, 12, 2)
                                    .splitlines() if '"w2"' not in line) + "\n")
    ok = ("ray_papersearch_requests_total", (("code", "OK"), ("method", "Search")))
    assert metric_deltas(start, gone)[ok] == 20.0  # w1's 10 -> 30; was 30 - 15 = 15


# --- tiny real runs (slow: real models, a real grpc.aio gateway, no Ray) ----------------------


def _queries_file(tmp_path: Path) -> Path:
    path = tmp_path / "queries.txt"
    path.write_text("federated learning without normalization\ndiffusion models\n")
    return path


@pytest.fixture(scope="module")
def gateway(sample_settings: Settings, sample_index: Path, embedder_dir: Path,
            reranker_dir: Path) -> Iterator[str]:
    encoder = Encoder(embedder_dir)
    store = open_index(sample_settings, encoder)
    loop = LoopThread()
    # A rerank budget no busy machine runs out of: the rerank run measures the reranker, and on
    # a starved CPU (a CI run beside a benchmark) 30 pairs took longer than the default 2 s, so
    # every search fell back to fused results and there was nothing to measure.
    serve = sample_settings.serve.model_copy(update={"rerank_timeout_s": 60.0})
    servers = Servers(loop, sample_settings.model_copy(update={"serve": serve}))
    try:
        yield servers.start(LocalBackend(encoder, store, Reranker(reranker_dir)))
    finally:
        servers.stop()
        loop.close()
        store.close()


def _loadtest(target: str, out: Path, *options: str) -> dict[str, Any]:
    closed = f"127.0.0.1:{free_port()}"  # neither Ray's dashboard nor its metrics here
    argv = ["loadtest", "--target", target, "--out", str(out), "--status-url",
            f"http://{closed}", "--metrics-url", f"http://{closed}/metrics", *options]
    assert main(argv) == 0
    report: dict[str, Any] = json.loads((out / "loadtest.json").read_text())
    return report


@pytest.mark.slow
def test_a_tiny_run_against_a_real_gateway(gateway: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PAPERSEARCH_CORPUS_DIR", str(SAMPLE_CORPUS))  # default queries
    # the run in a daemon thread, so that a hang fails the test rather than holding it (and
    # without the command's signal handlers: Python sets those in the main thread only)
    monkeypatch.setattr(interrupts, "catch_sigint", lambda: None)
    ran: list[dict[str, Any] | Exception] = []

    def load() -> None:
        try:
            ran.append(_loadtest(gateway, tmp_path, "--steps", "2:1,4:1.5", "--seed", "3",
                                 "--no-rerank"))
        except Exception as error:  # noqa: BLE001 (raised again below, in the test's thread)
            ran.append(error)

    run = threading.Thread(target=load, daemon=True)
    run.start()
    run.join(300)  # a hang guard: the run stops by itself
    assert not run.is_alive(), "the load test was still running after 300 s"
    [report] = ran
    if isinstance(report, Exception):
        raise report
    out = capsys.readouterr().out
    assert "scheduled 8  sent 8  ok 8  errors 0" in out
    assert "samples unreadable" in out and "metrics unreadable" in out

    summary = report["summary"]
    assert (summary["scheduled"], summary["sent"], summary["ok"]) == (8, 8, 8)
    assert summary["errors"] == {} and summary["not_sent"] == summary["cancelled"] == 0
    assert summary["reranked_ratio"] == 0.0 and summary["duration_s"] == 2.5
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    seconds = report["seconds"]
    assert [row["offered"] for row in seconds[:3]] == [2, 4, 2]
    assert sum(row["ok"] for row in seconds) == 8 and seconds[-1]["in_flight"] == 0
    assert [(s["rate_qps"], s["offered"], s["ok"]) for s in report["steps"]] == [
        (2, 2, 2), (4, 6, 6)]

    replicas = report["replicas"]
    assert replicas["samples"] and replicas["failed"] == len(replicas["samples"])
    assert replicas["range"] == {} and "/api/serve/applications/" in replicas["first_error"]
    assert report["metrics"]["deltas"] is None and report["metrics"]["error"]
    assert report["run"]["target"] == gateway and report["run"]["health_before"] == "SERVING"
    assert set(report) == {"run", "summary", "steps", "seconds", "replicas", "metrics"}
    assert (tmp_path / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_calibrated_run_against_a_real_gateway(gateway: str, tmp_path: Path) -> None:
    report = _loadtest(gateway, tmp_path, "--calibrate", "--steps", "0.02:1,0.05:1",
                       "--calibrate-s", "2", "--calibrate-in-flight", "4",
                       "--calibrate-settle-s", "0", "--queries", str(_queries_file(tmp_path)),
                       "--no-rerank", "--json")
    calibration = report["run"]["calibration"]
    qps = calibration["saturation_qps"]
    assert qps > 0 and calibration["ok"] == round(qps * calibration["window_s"])
    assert calibration["fractions"] == "0.02:1,0.05:1"
    # each step's rate is its fraction of the measured QPS, to 4 significant digits (on a
    # machine past 2,000 QPS, rounding to 2 decimals expected other digits)
    steps = [step.split(":") for step in report["run"]["profile"].split(",")]
    assert [seconds for _, seconds in steps] == ["1", "1"]
    assert [float(rate) for rate, _ in steps] == [
        pytest.approx(fraction * qps, rel=1e-3) for fraction in (0.02, 0.05)]
    assert report["summary"]["errors"] == {} and report["summary"]["ok"] > 0


@pytest.mark.slow
def test_a_calibrated_rerank_run_measures_the_reranker(gateway: str, tmp_path: Path) -> None:
    report = _loadtest(gateway, tmp_path, "--calibrate", "--steps", "0.5:2",
                       "--calibrate-s", "8", "--calibrate-in-flight", "2",
                       "--calibrate-settle-s", "0", "--queries", str(_queries_file(tmp_path)),
                       "--rerank", "--deadline-s", "30", "--json")
    calibration = report["run"]["calibration"]
    window, pairs = calibration["rerank_window"], calibration["reranked_pairs"]
    reranked, rerank_s = calibration["reranked"], calibration["rerank_s"]
    assert window == Settings().search.rerank_top_n and 0 < reranked <= calibration["ok"]
    assert 0 < pairs <= window * reranked and 0 < rerank_s < calibration["window_s"] * 2
    assert calibration["saturation_qps"] == pytest.approx(reranked / rerank_s, abs=0.01)
    assert report["summary"]["errors"] == {}


@pytest.mark.slow
def test_a_deadline_too_short_counts_deadline_exceeded(gateway: str, tmp_path: Path) -> None:
    report = _loadtest(gateway, tmp_path, "--rate", "4", "--duration", "1", "--deadline-s",
                       "0.002", "--queries", str(_queries_file(tmp_path)), "--json")
    summary = report["summary"]
    assert summary["scheduled"] == summary["sent"] == 4
    assert summary["ok"] == 0 and summary["errors"] == {"DEADLINE_EXCEEDED": 4}
    assert summary["latency_ms"]["p50"] is None
    assert sum(row["errors"].get("DEADLINE_EXCEEDED", 0) for row in report["seconds"]) == 4
    assert (tmp_path / "loadtest.png").is_file()


# --- scale events ----------------------------------------------------------------------------


def _samples(counts: list[int], error_at: int | None = None) -> list[ReplicaSample]:
    return [ReplicaSample(float(t), {} if t == error_at else
                          {"Reranker": DeploymentState(running=n, target=n, status="HEALTHY")},
                          "unreachable" if t == error_at else None)
            for t, n in enumerate(counts)]


def test_scale_events_are_placed_on_the_steps() -> None:
    events = scale_events(_samples([1, 1, 1, 2, 2, 2, 1, 1], error_at=4), [0.0, 2.0, 5.0])
    assert [(e.t_s, e.before, e.after, e.step, e.since_step_s) for e in events] == [
        (3.0, 1, 2, 2, 1.0), (6.0, 2, 1, 3, 1.0)]
    assert [(e.previous_s, e.step_uncertain) for e in events] == [(2.0, False), (5.0, False)]
    assert direction_changes(events) == {"Reranker": 0}


def test_an_event_that_may_belong_to_an_earlier_step_says_so() -> None:
    """A scale-up late in a low step whose next samples failed was read as one in the high
    step, and a "none before the high step" check passed on it."""
    late = scale_events(_samples([1, 1, 1, 2, 2], error_at=2), [0.0, 2.0])
    assert [(e.step, e.previous_s, e.step_uncertain) for e in late] == [(2, 1.0, True)]
    across = scale_events(_samples([1, 1, 2, 2]), [0.0, 2.0])  # sample 1 in step 1, 2 in 2
    assert [(e.step, e.step_uncertain) for e in across] == [(2, True)]


def test_flapping_counts_turns_within_a_step() -> None:
    events = scale_events(_samples([1, 2, 1, 2, 1]), [0.0])
    assert direction_changes(events) == {"Reranker": 3}
    assert direction_changes(scale_events(_samples([1, 2, 2, 1]), [0.0, 2.0])) == {"Reranker": 0}


@pytest.mark.parametrize(("spec", "problem"), [
    ("0:1e9", "at most 14400 seconds"), ("1e300:30", "from 0 to 10000 QPS"),
    ("1:10000,1:10000", "lasts at most 14400 s"),
])
def test_a_profile_past_the_bounds_is_refused(spec: str, problem: str) -> None:
    """A load test stops by itself: 0:1e9 watched a pause for 1e9 s, 1e308 QPS overflowed."""
    with pytest.raises(ValueError, match=problem):
        LoadProfile.parse_steps(spec)


def test_a_count_cut_does_not_watch_a_following_pause() -> None:
    cut = schedule(LoadProfile.parse_steps("10:30,0:600,10:30"), 300)
    assert len(cut.offsets) == 300 and cut.duration_s == 30.0  # was 630 s
    assert schedule(LoadProfile.parse_steps("10:30,10:30"), 350).duration_s == 35.0


@pytest.mark.parametrize(("extra", "problem"), [
    (["--status-url", "http://192.0.2.1:8265"], "refusing to poll --status-url"),
    (["--metrics-url", "http://192.0.2.1:8080/metrics"], "refusing to poll --metrics-url"),
    (["--sample-s", "1e-9"], "--sample-s must be within 0.1..60"),
    (["--deadline-s", "1e9"], "--deadline-s must be within 0..600"),
    (["--metrics-settle-s", "1e9"], "--metrics-settle-s must be within 0..600"),
    (["--calibrate", "--calibrate-s", "86400"], "--calibrate-s must be > the 1 s warm-up and at "
                                                "most 300"),
    (["--calibrate", "--calibrate-in-flight", "100000"], "--calibrate-in-flight must be within "
                                                         "1..1024"),
])
def test_options_past_their_bounds_are_refused(tmp_path: Path, extra: list[str],
                                               problem: str) -> None:
    """Each ran unbounded (a 24 h burst, a 1e9 s deadline) or polled any host at any rate."""
    args = ["loadtest", "--target", "localhost:50051", "--steps", "0.5:10", "--queries",
            str(_queries_file(tmp_path)), *extra]
    with pytest.raises(ValueError, match=re.escape(problem)):
        build(Settings(), build_parser().parse_args(args))


def test_a_calibration_burst_stops_at_the_request_cap_and_measures_up_to_it() -> None:
    """Closed loop for burst_s whatever --requests said (372,328 requests in 1.5 s against an
    instant searcher); capped, its rate must still be the service's: over the time up to the
    cap, not the whole burst (600 of a 3 s burst's read 108 QPS of a 400 QPS service)."""

    class Paced:
        """400 answers per second of a fake clock, whoever waits for them."""

        def __init__(self) -> None:
            self.now, self.sent = 0.0, 0

        def clock(self) -> float:
            return self.now

        async def search(self, query: Any, timeout_s: float) -> Any:
            self.sent += 1
            await asyncio.sleep(0)
            self.now += 1 / 400
            return SearchResult((), False, {})

    def measured(cap: int) -> tuple[int, float]:
        searcher = Paced()
        done = asyncio.run(burst(
            searcher, ["q"], SearchOptions(rerank=False), 1.0,  # type: ignore[arg-type]
            CalibrationOptions(in_flight=4, burst_s=3.0, max_requests=cap), searcher.clock))
        return searcher.sent, done.qps

    assert measured(100_000)[1] == pytest.approx(400, rel=0.01)  # the whole burst
    sent, qps = measured(600)
    assert sent == 600 and qps == pytest.approx(400, rel=0.02)
    with pytest.raises(ValueError, match="all sent in the burst's 1 s warm-up"):
        measured(300)


def test_latency_from_the_schedule_includes_the_generators_lag() -> None:
    """Latency from the actual send hides time a request waited to be sent (coordinated
    omission): a generator stalled for 0.5 s read p50 10 ms where clients waited ~300."""
    records = [RequestRecord(0.0, Outcome.COMPLETED, started_s=0.5, ended_s=0.51, code="OK"),
               RequestRecord(0.1, Outcome.COMPLETED, started_s=0.5, ended_s=0.51, code="OK"),
               RequestRecord(0.5, Outcome.COMPLETED, started_s=0.5, ended_s=0.51, code="OK")]
    summary = summarize(records, duration_s=0.6)
    assert summary.latency_ms["p50"] == pytest.approx(10)
    assert summary.from_schedule_ms["p50"] == pytest.approx(410)
    assert summary.from_schedule_ms["max"] == pytest.approx(510)

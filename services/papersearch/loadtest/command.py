"""``papersearch loadtest``: options, the loopback guard, and one run from start to files.

Imported at module level: argparse, the standard library, the settings, the client's TLS and
retry options and the search modes; the run's modules (the client, the generator, the
monitor, plotting) load when it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from papersearch.client_retry import add_retry_argument
from papersearch.client_tls import Tls, add_tls_arguments, tls_from_args
from papersearch.index.query import MODES
from papersearch.settings import is_loopback as host_is_loopback

if TYPE_CHECKING:
    from papersearch.client import AsyncSearchClient
    from papersearch.loadtest.calibrate import CalibrationOptions
    from papersearch.loadtest.profile import LoadProfile, Schedule
    from papersearch.loadtest.report import LoadTestReport
    from papersearch.loadtest.runner import SearchOptions
    from papersearch.settings import Settings

DEFAULT_MAX_REQUESTS = 100_000
DEFAULT_RATE_DURATION_S = 30.0
HEALTH_TIMEOUT_S = 5.0
SETTLE_LIMIT_S = 120.0  # past --calibrate-settle-s, waiting for the pre-burst replica counts


class TargetUnreachable(ValueError):
    """The target did not answer a health check before the run."""


class CalibrationFailed(ValueError):
    """The calibration burst got errors: no saturation QPS to scale the profile by."""


def split_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port)."""
    if "://" in target:  # a URL, as curl takes the HTTP front's
        raise ValueError(f"--target is the gateway's gRPC HOST:PORT without a scheme (such as "
                         f"127.0.0.1:50051), got {target!r}")
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        sep, port = rest[:1], rest[1:]
    else:
        host, sep, port = target.rpartition(":")
        if ":" in host:  # "::1:50051": gRPC reads it otherwise, the loopback check so
            raise ValueError(f"--target: write an IPv6 address in brackets, [{host}]:{port}")
    if sep != ":" or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--target must be HOST:PORT ([v6]:PORT for IPv6), got {target!r}")
    return host, int(port)


def is_loopback(target: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    host, _ = split_target(target)
    return host_is_loopback(host)


MAX_WAIT_S = 600.0  # --deadline-s, --metrics-settle-s: a load test stops by itself
MIN_SAMPLE_S = 0.1  # the replica and metrics poll: not a load of its own on the dashboard


def _within(flag: str, value: float, low: float, high: float, *,
            above_low: bool = False) -> None:
    """``value`` within low..high seconds (NaN is not); ``above_low``: and not low itself."""
    if not low <= value <= high or (above_low and value == low):
        raise ValueError(f"{flag} must be within {low:g}..{high:g} seconds"
                         f"{f' (and > {low:g})' if above_low else ''}, got {value}")


def check_target(target: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(target):
        raise ValueError(f"refusing to load-test {target}: not a loopback address "
                         "(localhost, 127.0.0.0/8, ::1); pass --allow-remote if you mean it")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", metavar="HOST:PORT", required=True, help="the gRPC gateway")
    add_tls_arguments(parser)
    add_retry_argument(parser)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=float, metavar="QPS", help="a constant rate")
    load.add_argument("--steps", metavar="SPEC",
                      help='rate:seconds steps, e.g. "2:30,8:60,2:90" (low, high, low)')
    parser.add_argument("--calibrate", action="store_true",
                        help="first measure the service's saturation QPS (a closed-loop burst; "
                             "with --rerank, reranked searches per second of the reranker's "
                             "time), then read the rates as fractions of it, e.g. "
                             "--calibrate --steps 0.15:30,0.8:60,0.15:90")
    parser.add_argument("--calibrate-in-flight", type=int, metavar="N",
                        help="requests kept in flight during the burst (default 1, as --rerank "
                             "is the default: its reading needs rerank calls that do not "
                             "queue; 64 with --no-rerank)")
    parser.add_argument("--calibrate-s", type=float, metavar="S",
                        help="the burst's length, 1 s warm-up included; short, so the "
                             "replicas running before it are what it measures (default 6)")
    parser.add_argument("--calibrate-settle-s", type=float, metavar="S",
                        help="idle after the burst, so it leaves the autoscaler's look-back "
                             "window before the profile starts; longer if the replica counts "
                             f"are not back to the burst's (at most {SETTLE_LIMIT_S:g} s "
                             "more; default 20)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help=f"stop after S seconds (default: the steps' length; with --rate "
                             f"{DEFAULT_RATE_DURATION_S:g})")
    parser.add_argument("--requests", type=int, default=DEFAULT_MAX_REQUESTS, metavar="N",
                        help="stop after N requests (default %(default)s)")
    parser.add_argument("--poisson", action="store_true",
                        help="Poisson arrivals (seeded) instead of evenly spaced ones")
    parser.add_argument("--queries", type=Path, metavar="FILE",
                        help="one query a line (default: titles and abstract phrases of "
                             "corpus_dir)")
    parser.add_argument("--seed", type=int, default=0, help="query order and arrivals")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--mode", default="hybrid", choices=MODES)
    parser.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=True,
                        help="ask for the rerank stage (the server may have it off)")
    parser.add_argument("--deadline-s", type=float, default=10.0,
                        help="per-request gRPC deadline (default %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=256,
                        help="requests due past this many in flight are not sent, and counted")
    parser.add_argument("--api-key", default=os.environ.get("PAPERSEARCH_API_KEY"),
                        help="x-api-key (default: $PAPERSEARCH_API_KEY)")
    parser.add_argument("--status-url",
                        help="Ray dashboard, for Serve's replica counts (default: "
                             "http://serve.dashboard_host:serve.dashboard_port)")
    parser.add_argument("--metrics-url",
                        help="Prometheus text metrics (default: "
                             "http://127.0.0.1:serve.metrics_port/metrics, Ray's export port)")
    parser.add_argument("--metrics-settle-s", type=float, default=12.0,
                        help="wait before the final metrics read: Ray exports custom metrics "
                             "every 10 s by default, the replicas' counters flush every second "
                             "(default %(default)s)")
    parser.add_argument("--app", help="Serve application name (default: serve.app_name)")
    parser.add_argument("--sample-s", type=float, default=1.0,
                        help="replica sampling period (default %(default)s)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="results folder, new or without a run in it (default: "
                             "loadtest-results/<UTC timestamp>)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a target that is not a loopback address")
    parser.add_argument("--json", action="store_true", help="print the JSON report")


@dataclass(frozen=True, slots=True)
class LoadTest:
    """Everything one run needs, validated."""

    target: str
    api_key: str | None
    tls: Tls | None
    profile: LoadProfile
    schedule: Schedule
    queries: list[str]
    options: SearchOptions
    deadline_s: float
    max_in_flight: int
    status_url: str
    metrics_url: str
    metrics_settle_s: float
    app: str
    sample_s: float
    retry: bool = True
    wait_for_ready: bool = False
    calibration: CalibrationOptions | None = None  # rates are fractions of a measured QPS
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_duration_s: float | None = None
    poisson: bool = False
    seed: int = 0

    def with_rates(self, qps: float) -> LoadTest:
        """The test with its fractions turned into rates of ``qps``."""
        from papersearch.loadtest.calibrate import scaled
        from papersearch.loadtest.profile import schedule

        profile = scaled(self.profile, qps)
        return replace(self, profile=profile, calibration=None, schedule=schedule(
            profile, self.max_requests, self.max_duration_s, self.poisson, self.seed))

    def describe(self) -> dict[str, Any]:
        """The run's settings, for the report."""
        return {
            "target": self.target, "profile": self.profile.describe(),
            "duration_s": self.schedule.duration_s, "requests": len(self.schedule.offsets),
            "queries": len(self.queries), "top_k": self.options.top_k, "mode": self.options.mode,
            "rerank": self.options.rerank, "deadline_s": self.deadline_s,
            "max_in_flight": self.max_in_flight, "status_url": self.status_url,
            "metrics_url": self.metrics_url, "app": self.app, "sample_s": self.sample_s,
            "api_key": self.api_key is not None, "tls": self.tls is not None,
            "retry": self.retry, "wait_for_ready": self.wait_for_ready,
        }


async def execute(test: LoadTest) -> LoadTestReport:
    """Health check, the calibration burst if asked, metrics before, the run with the replica
    monitor beside it, metrics after (once they had time to be exported), and the numbers."""
    import grpc

    from papersearch.client import AsyncSearchClient
    from papersearch.loadtest.monitor import ReplicaMonitor, metric_deltas, read_metrics
    from papersearch.loadtest.report import LoadTestReport
    from papersearch.loadtest.runner import Runner
    from papersearch.loadtest.stats import per_second, per_step, summarize

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    loop = asyncio.get_running_loop()
    async with AsyncSearchClient(test.target, test.api_key, HEALTH_TIMEOUT_S, test.tls,
                                 test.retry, test.wait_for_ready) as client:
        try:
            health = await client.health()
        except grpc.aio.AioRpcError as error:
            raise TargetUnreachable(f"{test.target} did not answer a health check: "
                                    f"{error.code().name}: {error.details()}") from None
        calibrated = None
        if test.calibration is not None:
            test, calibrated = await calibrate(test, client)
        run = test.describe() | {"started_at": started_at, "health_before": health}
        if calibrated is not None:
            run["calibration"] = calibrated
        try:
            before = await asyncio.to_thread(read_metrics, test.metrics_url)
            metrics_error = None
        except OSError as error:
            before, metrics_error = None, str(error)
        start = loop.time()

        def clock() -> float:
            return loop.time() - start

        monitor = ReplicaMonitor(test.status_url, test.app, test.sample_s, clock)
        watcher = asyncio.create_task(monitor.run())
        try:
            runner = Runner(client, test.queries, test.options, test.deadline_s,
                            test.max_in_flight, clock)
            records = await runner.run(test.schedule.offsets, test.schedule.duration_s)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    deltas = None
    if before is not None:
        await asyncio.sleep(test.metrics_settle_s)
        try:
            deltas = metric_deltas(before, await asyncio.to_thread(read_metrics, test.metrics_url))
        except OSError as error:
            metrics_error = str(error)
    duration_s = test.schedule.duration_s
    return LoadTestReport(
        run=run, summary=summarize(records, duration_s),
        steps=per_step(records, test.profile, duration_s),
        seconds=per_second(records, monitor.samples, duration_s), samples=monitor.samples,
        metric_deltas=deltas, metrics_error=metrics_error,
    )


async def calibrate(test: LoadTest, client: AsyncSearchClient) -> tuple[LoadTest, dict[str, Any]]:
    """The burst (replica counts read before and after), the pause (until the counts are
    those before the burst again), and the test with its rates; raises CalibrationFailed when
    the burst got errors or no answer."""
    from papersearch.loadtest.calibrate import burst, grown, settle
    from papersearch.loadtest.monitor import ReplicaMonitor

    assert test.calibration is not None
    loop = asyncio.get_running_loop()
    monitor = ReplicaMonitor(test.status_url, test.app, test.sample_s, loop.time)

    async def replicas() -> dict[str, int] | str:
        sample = await monitor.sample()
        if sample.error is not None:
            return sample.error
        return {name: state.running for name, state in sorted(sample.deployments.items())}

    before = await replicas()
    measured = await burst(client, test.queries, test.options, test.deadline_s,
                           test.calibration, loop.time)
    after = await replicas()
    if measured.errors or measured.ok == 0:
        raise CalibrationFailed(
            f"calibration burst ({test.calibration.in_flight} in flight): {measured.ok} OK, "
            f"errors {measured.errors or 'none'}; the saturation QPS would mean nothing "
            "(a smaller --calibrate-in-flight or a longer --deadline-s may help)")
    if more := grown(before, after):
        raise CalibrationFailed(
            f"replicas came up during the calibration burst ({more}, before and after): the "
            "saturation QPS would not be one replica's (a shorter --calibrate-s, or a longer "
            "upscale delay in the autoscaling policy, keeps the burst to one)")
    if measured.rerank_window and measured.qps == 0:
        raise CalibrationFailed(
            f"calibration burst ({test.calibration.in_flight} in flight): {measured.ok} OK, "
            "none reranked after the warm-up; the reranker's capacity would mean nothing (is "
            "the rerank stage on in the service, search.rerank_enabled? a longer --calibrate-s "
            "may help)")
    settle_start = loop.time()
    settled = await settle(replicas, before, test.calibration.settle_s, SETTLE_LIMIT_S,
                           test.sample_s)
    report = {
        "saturation_qps": round(measured.qps, 2), "ok": measured.ok,
        **({"reranked": measured.reranked, "rerank_s": round(measured.rerank_s, 3),
            "reranked_pairs": measured.pairs, "rerank_window": measured.rerank_window}
           if measured.rerank_window else {}),
        "window_s": measured.window_s, "in_flight": test.calibration.in_flight,
        "replicas_before": before, "replicas_after": after, "replicas_at_start": settled,
        "settle_s": round(loop.time() - settle_start, 1), "fractions": test.profile.describe(),
    }
    return test.with_rates(measured.qps), report


def build(settings: Settings, args: argparse.Namespace) -> LoadTest:
    """Validate the options (raising ValueError / FileNotFoundError) before anything runs."""
    from papersearch.loadtest.calibrate import (
        IN_FLIGHT,
        RERANK_IN_FLIGHT,
        CalibrationOptions,
        fractions,
    )
    from papersearch.loadtest.profile import LoadProfile, schedule
    from papersearch.loadtest.queries import load_queries
    from papersearch.loadtest.report import REPORT_FILE
    from papersearch.loadtest.runner import SearchOptions
    from papersearch.pipeline.query import SearchQuery

    check_target(args.target, args.allow_remote)
    if args.rate is not None:
        duration = DEFAULT_RATE_DURATION_S if args.duration is None else args.duration
        profile = LoadProfile.constant(args.rate, duration)
    else:
        profile = LoadProfile.parse_steps(args.steps)
    calibration = None
    burst_options = {"--calibrate-in-flight": args.calibrate_in_flight,
                     "--calibrate-s": args.calibrate_s,
                     "--calibrate-settle-s": args.calibrate_settle_s}
    if not args.calibrate and (given := [f for f, v in burst_options.items() if v is not None]):
        raise ValueError(f"{', '.join(given)} shape the calibration burst: add --calibrate")
    if args.calibrate:
        profile = fractions(profile)
        window = settings.search.rerank_top_n if args.rerank else 0
        in_flight = args.calibrate_in_flight
        if in_flight is None:
            in_flight = RERANK_IN_FLIGHT if args.rerank else IN_FLIGHT
        given_s = {name: value for name, value in (("burst_s", args.calibrate_s),
                                                   ("settle_s", args.calibrate_settle_s))
                   if value is not None}
        calibration = CalibrationOptions(in_flight=in_flight, rerank_window=window,
                                         max_requests=args.requests, **given_s)
    _within("--deadline-s", args.deadline_s, 0.0, MAX_WAIT_S, above_low=True)
    _within("--metrics-settle-s", args.metrics_settle_s, 0.0, MAX_WAIT_S)
    _within("--sample-s", args.sample_s, MIN_SAMPLE_S, 60.0)
    for flag, url in (("--status-url", args.status_url), ("--metrics-url", args.metrics_url)):
        host = urlsplit(url).hostname if url else None
        if url and not args.allow_remote and not (host and host_is_loopback(host)):
            raise ValueError(f"refusing to poll {flag} {url}: not a loopback address "
                             "(localhost, 127.0.0.0/8, ::1); pass --allow-remote if you mean it")
    if args.max_in_flight < 1:
        raise ValueError(f"--max-in-flight must be >= 1, got {args.max_in_flight}")
    if args.out is not None and (args.out / REPORT_FILE).exists():  # a recorded run, as the
        # README's docs/loadtest/... were: written over, its summary.txt left beside it
        raise ValueError(f"--out {args.out} already holds a run ({REPORT_FILE}): give a new "
                         "folder, or move that run away first")
    queries = load_queries(args.queries, settings.corpus_dir, args.seed)
    options = SearchOptions(args.top_k, args.mode, args.rerank)
    for text in queries:  # what the gateway would refuse is a mistake in the options or file
        SearchQuery(text, options.top_k, options.mode).validate(settings.search)
    serve = settings.serve
    return LoadTest(
        target=args.target, api_key=args.api_key, tls=tls_from_args(args), profile=profile,
        schedule=schedule(profile, args.requests, args.duration, args.poisson, args.seed),
        queries=queries, options=options, deadline_s=args.deadline_s,
        max_in_flight=args.max_in_flight,
        status_url=args.status_url or f"http://{serve.dashboard_host}:{serve.dashboard_port}",
        metrics_url=args.metrics_url or f"http://127.0.0.1:{serve.metrics_port}/metrics",
        metrics_settle_s=args.metrics_settle_s,
        app=args.app or serve.app_name, sample_s=args.sample_s, retry=args.retry,
        wait_for_ready=args.wait_for_ready, calibration=calibration,
        max_requests=args.requests, max_duration_s=args.duration, poisson=args.poisson,
        seed=args.seed,
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.interrupts import Interrupted
    from papersearch.loadtest.plot import plot_run
    from papersearch.loadtest.report import REPORT_FILE, format_summary

    test = build(settings, args)
    out = args.out or Path("loadtest-results") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    try:  # Ctrl-C: asyncio.run cancels the run, in-flight requests included
        report = asyncio.run(execute(test))
    except KeyboardInterrupt:
        raise Interrupted("loadtest: stopped sending; no report written") from None
    json_path = out / REPORT_FILE
    png_path = out / "loadtest.png"
    title = f"papersearch loadtest {test.target}: {report.run['profile']} (QPS:s)"
    try:
        report.write(out)
        plot_run(png_path, title, report.seconds, report.samples, test.profile.boundaries_s)
    except KeyboardInterrupt:
        json_path.unlink(missing_ok=True)
        png_path.unlink(missing_ok=True)
        raise Interrupted("loadtest: stopped while writing; no report written") from None
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_summary(report, [json_path, png_path]))
    return 0

"""Saturation throughput of the served pipeline vs its compute floor, same run.

    python benchmarks/throughput.py [--replicas 1 2] [--seconds 30] > throughput.json

For each path, the bottleneck deployment is fixed at 1, 2, ... replicas (autoscaling off) and
the gRPC gateway is driven closed-loop at each of the path's concurrency levels (requests in
flight per replica) for ``--seconds`` after a warm-up; saturation QPS = the best level's
completed searches / wall time (too few in flight leaves the pipeline's stages idle and the
gateway's coalescing little to batch: QPS still grows with concurrency there and CPU per search
falls; 256 in flight fill the gateway's coalesced encoder calls, serve.coalesce_in_flight 4 x
coalesce_max_batch 32, with as many again retrieving; every level is in the JSON).

- ``rerank``: Search with rerank (the stage switched on for the run, its budget raised so no
  search falls back): the Reranker (30 cross-encoder pairs per search) is the bottleneck.
- ``no_rerank``: Search without rerank: the QueryEncoder is the model stage.

Query feedback is off in both (``index.prf_enabled`` false): the served path sheds it at
saturation anyway (``search.feedback_max_in_flight``; benchmarks/feedback_shedding.py measures
that), the floor would not.

The compute floor is the same work done in this process with ideal batching and no serving at
all: ``k`` threads (one per replica, each with its own single-threaded onnxruntime sessions as a
replica has) take batches of 32 queries: encode them in one call, retrieve each (hybrid, the
rerank depth), and score all their (query, passage) pairs in one call. Passes over the query
set repeat for at least ``--floor-seconds`` and the best pass counts. Ratio = served QPS /
floor QPS with the same ``k`` (target >= 0.8). The floor runs before the served runs and again
after them (the embedded shard admits one process; Ray and the app start once and are
redeployed per replica count in between): on a shared machine whose speed drifts, the better of
the two counts. ``floor_stage_cpu_ms_per_search``: per floor run, its CPU ms per query by
stage (encode, retrieve, rerank; averaged over all its passes), what each served stage would
cost without serving.

Over each measured window the CPU time of every process of the run (this one: the load
generator; the replicas by deployment; Ray's own) is read: ``cpu_ms_per_search`` by role
(``ray_cpu_ms_per_search``: Ray's own by process, e.g. the dashboard, its agent, the Serve
controller); ``cpu_ratio`` = the served path's (all but the load generator) / the floor's
best pass's CPU per query (target <= 1.5); and
``cpu_bound_qps`` = cores x 1000 / total, what the machine's cores could serve if every core
were busy all the time at that cost. Where ``cpu_bound_qps / floor`` (``cpu_bound_ratio``) is
under the target, the cores, not the bottleneck deployment, bound the ratio.
``cores_busy``: at the best level, each role's CPU per search x QPS, the cores it kept busy
(the gateway runs its Python, gRPC front and index calls, one thread at a time: its GIL).
``mean_batch`` per level: queries per QueryEncoder ONNX call (pairs per Reranker call) in the
window, from the replicas' ``papersearch_batch_size`` histograms at the metrics port.
``cpu_steal_share``: the share of the machine's CPU time the hypervisor gave other guests over
the whole run (floors included), to tell a run on a busy host from one on a quiet one.

``like_for_like``: the ratios above set one measured window (30 s, the best level) against the
floor's best pass (one of ~12 passes of ~2 s): on a host whose speed moves by a third within
seconds (a pure-Python loop: 104-172 ms between windows of one run), a best-of-many against a
single sample. Here each window is also read in ``--intervals`` parts (5 s by default), and the
best level's parts are set against the floor's passes, median against median and best against
best: ``ratio_median`` and ``cpu_ratio_median``, ``ratio_best`` and ``cpu_ratio_best``, with
every part and pass listed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

import psutil
from common import (
    Unavailable,
    check_prerequisites,
    closed_loop,
    cpu_steal,
    free_port,
    load_queries,
    local_ray,
    log,
    replica_overrides,
    wait_serving,
)

from papersearch.client import AsyncSearchClient, SearchClient
from papersearch.encoder.runtime import Encoder
from papersearch.loadtest.monitor import MetricKey, MetricsSnapshot, metric_deltas, read_metrics
from papersearch.pipeline.factory import open_index
from papersearch.pipeline.query import SearchQuery, SearchResult
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

# path: (bottleneck deployment, rerank, requests in flight per replica to try)
PATHS = {"rerank": ("Reranker", True, (8,)), "no_rerank": ("QueryEncoder", False, (16, 64, 256))}
FLOOR_BATCH = 32
RERANK_BUDGET_S = 120.0  # the benchmark measures reranked searches: no fallback to fused


@dataclass(frozen=True)
class Window:
    """A level's measurement: ``warmup_s`` unmeasured, then ``seconds`` measured in
    ``intervals`` equal parts (CPU and completed searches per part as well as in all)."""

    warmup_s: float
    seconds: float
    intervals: int


@dataclass
class Floor:
    """One floor measurement: the best pass's queries/s and CPU ms per query, and the CPU ms
    per query by stage, averaged over every pass: encoding and reranking as their threads'
    CPU time (onnxruntime runs on the calling thread, one intra-op thread), retrieval as the
    rest of the process's (the embedded engine works on threads of its own too)."""

    qps: float
    cpu_ms: float
    stage_cpu_ms: dict[str, float]
    passes: list[dict[str, float]]  # every pass: its queries/s and CPU ms per query


def best_qps(floors: Sequence[Floor]) -> float:
    """The better of a replica count's floor runs (before and after the served runs)."""
    return max(f.qps for f in floors)


def floor_qps(settings: Settings, queries: Sequence[str], workers: int, rerank: bool,
              min_seconds: float) -> Floor:
    """Encode + retrieve (+ rerank) in-process, ``workers`` threads, big batches, passes over
    ``queries`` repeated for at least ``min_seconds``."""
    encoders = [Encoder.from_settings(settings.models) for _ in range(workers)]
    rerankers = [Reranker.from_settings(settings.models) if rerank else None
                 for _ in range(workers)]
    store = open_index(settings, encoders[0])
    retriever = Retriever(store)
    lock = threading.Lock()  # one embedded shard handle; retrieval is a small part of the work
    depth = settings.search.rerank_top_n if rerank else settings.search.default_top_k
    chunks = [list(queries[i:i + FLOOR_BATCH]) for i in range(0, len(queries), FLOOR_BATCH)]
    stage_s = dict.fromkeys(("encode", "rerank"), 0.0)  # their threads' CPU, all passes
    tally = threading.Lock()

    def run(chunk: list[str], worker: int) -> dict[str, float]:
        started = time.thread_time()
        vectors = encoders[worker].encode_queries(chunk)
        encoded = time.thread_time()
        with lock:
            found = [retriever.search(q, v, mode="hybrid", limit=depth)
                     for q, v in zip(chunk, vectors, strict=True)]
        retrieved = time.thread_time()
        reranker = rerankers[worker]
        if reranker is not None:
            reranker.score_pairs([(q, h.paper.text)
                                  for q, hits in zip(chunk, found, strict=True) for h in hits])
        return {"encode": encoded - started, "rerank": time.thread_time() - retrieved}

    def work(worker: int) -> None:
        for chunk in chunks[worker::workers]:
            spent = run(chunk, worker)
            with tally:
                for stage, seconds in spent.items():
                    stage_s[stage] += seconds

    try:
        for worker in range(workers):  # warm-up: first-call allocations out of the measurement
            run(chunks[0][:4], worker)
        passes: list[tuple[float, float]] = []  # (wall s, CPU s)
        me = psutil.Process()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            while sum(wall for wall, _ in passes) < min_seconds:
                started, cpu = time.perf_counter(), me.cpu_times()
                list(pool.map(work, range(workers)))
                used = me.cpu_times()
                passes.append((time.perf_counter() - started,
                               used.user + used.system - cpu.user - cpu.system))
        wall, cpu_s = min(passes)
        done = len(queries) * len(passes)
        stages = {"encode": stage_s["encode"],
                  "retrieve": sum(cpu for _, cpu in passes) - sum(stage_s.values())}
        if rerank:
            stages["rerank"] = stage_s["rerank"]
        return Floor(round(len(queries) / wall, 3), round(cpu_s * 1000 / len(queries), 3),
                     {stage: round(s * 1000 / done, 3) for stage, s in stages.items()},
                     [{"qps": round(len(queries) / w, 3),
                       "cpu_ms": round(c * 1000 / len(queries), 3)} for w, c in passes])
    finally:
        store.close()


class CpuMeter:
    """CPU seconds of this process and every process under it (Ray's, the replicas') between
    ``start`` and ``stop``, summed by role; ``mark`` in between adds up the served path's (all
    but this process) since ``start``, for the window's intervals. The processes are listed
    again at each mark and at ``stop``: one that began in the window counts from 0, one that
    ended keeps its last reading (what it used after that, at most an interval's, is lost).
    Listed at ``start`` only, a replica started or restarted meanwhile went uncounted, which
    only lowered the served path's CPU."""

    def __init__(self, app: str) -> None:
        self.prefix = f"ray::ServeReplica:{app}:"
        self.before: dict[psutil.Process, float] = {}
        self.last: dict[psutil.Process, float] = {}  # each process's latest reading
        # named when first seen, and again at each reading while Ray's own (an idle worker
        # may become a replica, retitling itself)
        self.roles: dict[psutil.Process, tuple[str, str]] = {}
        self.used: dict[tuple[str, str], float] = {}  # (role, process name): CPU seconds
        self.marks: list[float] = []  # the served path's CPU seconds since start, at each mark

    def role(self, process: psutil.Process) -> tuple[str, str]:
        """(role, process name): a replica's deployment, ``load_generator`` (this process) or
        ``ray`` (Ray's own: GCS, raylet, agents, dashboard, controller, idle workers)."""
        if process.pid == os.getpid():
            return "load_generator", "load_generator"
        try:
            argv = process.cmdline()
        except psutil.Error:
            return "ray", "gone"
        name = " ".join(argv)
        if name.startswith(self.prefix):  # the title may name the call: "Gateway.check_health"
            deployment = name[len(self.prefix):].split()[0].split(".")[0]
            return deployment, deployment
        return "ray", process_name(argv)

    @staticmethod
    def _cpu(process: psutil.Process) -> float | None:
        try:
            times = process.cpu_times()
        except psutil.Error:  # gone since the snapshot
            return None
        return float(times.user + times.system)

    def _read(self, *, newcomers_from_zero: bool = True) -> None:
        me = psutil.Process()
        for process in (me, *me.children(recursive=True)):
            if (cpu := self._cpu(process)) is None:
                continue
            if process not in self.before:
                self.before[process] = 0.0 if newcomers_from_zero else cpu
            if self.roles.get(process, ("ray", ""))[0] == "ray":
                if (role := self.role(process)) != ("ray", "gone") or process not in self.roles:
                    self.roles[process] = role
            self.last[process] = cpu

    def start(self) -> None:
        self.before, self.last, self.roles = {}, {}, {}
        self._read(newcomers_from_zero=False)
        self.marks = [0.0]

    def mark(self) -> None:
        self._read()
        me = os.getpid()
        self.marks.append(sum(self.last[process] - before
                              for process, before in self.before.items() if process.pid != me))

    def stop(self) -> None:
        self.mark()
        self.used = {}
        for process, before in self.before.items():
            key = self.roles[process]
            self.used[key] = self.used.get(key, 0.0) + self.last[process] - before

    def missing(self, roles: Sequence[str]) -> list[str]:
        """Those of ``roles`` (deployments) no process was measured for: a run without them
        would report the served path's CPU without its replicas."""
        seen = {role for role, _ in self.used}
        return [role for role in roles if role not in seen]

    def per_search_ms(self, searches: int) -> dict[str, float]:
        by_role: dict[str, float] = {}
        for (role, _), seconds in self.used.items():
            by_role[role] = by_role.get(role, 0.0) + seconds
        per = {role: round(s * 1000 / max(searches, 1), 3) for role, s in sorted(by_role.items())}
        return {**per, "total": round(sum(self.used.values()) * 1000 / max(searches, 1), 3)}

    def ray_per_search_ms(self, searches: int) -> dict[str, float]:
        """The ``ray`` role by process name, the costliest first."""
        ray = sorted(((name, s) for (role, name), s in self.used.items() if role == "ray"),
                     key=lambda item: -item[1])
        return {name: round(s * 1000 / max(searches, 1), 3) for name, s in ray}


def process_name(argv: Sequence[str]) -> str:
    """A Ray process's name: its actor or task title (``ray::ServeController``), else the
    script a Python runs (``dashboard.py``; ``python -c`` for inline code), else the program
    (``raylet``)."""
    if not argv:
        return "unknown"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    program = Path(argv[0]).name
    if program.startswith("python"):
        for arg in argv[1:]:
            if arg == "-c":  # the code itself is no name
                return f"{program} -c"
            if not arg.startswith("-"):
                return Path(arg).name
    return program


def saturate(target: str, metrics_url: str, queries: Sequence[str], rerank: bool,
             concurrency: int, window: Window, meter: CpuMeter) -> dict[str, Any]:
    """Closed loop: ``concurrency`` callers search back to back; count what completes in the
    measured window (after the warm-up), and every error, the warm-up's and the last calls'
    included; ``meter`` reads CPU over the window and at each of its intervals' ends. The
    callers are coroutines on one asyncio channel: the load generator shares the cores with the
    served path, and a thread per caller (hundreds at the top levels) cost it more CPU."""
    return asyncio.run(_saturate(target, metrics_url, queries, rerank, concurrency, window,
                                 meter))


async def _saturate(target: str, metrics_url: str, queries: Sequence[str], rerank: bool,
                    concurrency: int, window: Window, meter: CpuMeter) -> dict[str, Any]:
    counts = {"ok": 0, "reranked": 0, "errors": 0}
    seconds, parts = window.seconds, window.intervals
    begin = time.monotonic() + window.warmup_s
    end = begin + seconds
    completed = [0] * parts  # searches completed in each interval of the window

    def record(result: SearchResult | None, _: float, now: float) -> None:
        if result is None:  # an error counts wherever it falls: warm-up, window or drain
            counts["errors"] += 1
        elif begin <= now <= end:
            counts["ok"] += 1
            counts["reranked"] += int(result.reranked)
            completed[min(int((now - begin) * parts / seconds), parts - 1)] += 1

    snapshots: list[MetricsSnapshot] = []

    def read(meter_step: Callable[[], None]) -> None:
        meter_step()
        try:
            snapshots.append(read_metrics(metrics_url))
        except OSError as error:  # the batch sizes are missing then, not the run
            log(f"served: metrics unreadable: {error}")

    loop = asyncio.get_running_loop()  # its clock is time.monotonic()
    loop.call_at(begin, read, meter.start)
    for part in range(1, parts):
        loop.call_at(begin + part * seconds / parts, meter.mark)
    loop.call_at(end, read, meter.stop)
    async with AsyncSearchClient(target, timeout_s=RERANK_BUDGET_S) as client:
        await closed_loop(client, queries, concurrency, end,
                          lambda text: SearchQuery(text, rerank=rerank), record)
    if missing := meter.missing(("Gateway", "QueryEncoder", *(("Reranker",) if rerank else ()))):
        raise SystemExit(f"throughput: no process of {', '.join(missing)} was measured (its "
                         "replicas' process titles changed?): the served CPU would leave it out")
    return {"qps": round(counts["ok"] / seconds, 3), "completed": counts["ok"],
            "reranked": counts["reranked"], "errors": counts["errors"],
            "concurrency": concurrency, "seconds": seconds,
            "mean_batch": mean_batches(metric_deltas(*snapshots)) if len(snapshots) == 2 else None,
            "cpu_ms_per_search": meter.per_search_ms(counts["ok"]),
            "ray_cpu_ms_per_search": meter.ray_per_search_ms(counts["ok"]),
            "intervals": [{"qps": round(n * parts / seconds, 3),
                           "served_path_cpu_ms": round((b - a) * 1000 / max(n, 1), 3)}
                          for n, (a, b) in zip(completed, pairwise(meter.marks), strict=True)]}


def mean_batches(deltas: dict[MetricKey, float]) -> dict[str, float | None]:
    """Items per model batch in the window, by deployment (papersearch_batch_size: queries per
    QueryEncoder ONNX call, pairs per Reranker call)."""
    sums: dict[str, list[float]] = {}
    for (name, labels), value in deltas.items():
        for suffix, slot in (("_sum", 0), ("_count", 1)):
            if name == f"ray_papersearch_batch_size{suffix}":
                deployment = dict(labels).get("deployment", "?")
                sums.setdefault(deployment, [0.0, 0.0])[slot] += value
    return {d: round(total / count, 2) if count > 0 else None
            for d, (total, count) in sorted(sums.items())}


def wait_replicas(app: str, deployment: str, count: int, timeout_s: float = 180.0) -> None:
    """Until a redeploy has settled: ``count`` RUNNING replicas and nothing else."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications[app]
        states = status.deployments[deployment].replica_states
        if status.status == "RUNNING" and dict(states) == {"RUNNING": count}:
            return
        time.sleep(1.0)
    raise TimeoutError(f"{deployment} never settled at {count} replicas")


def run_served(settings: Settings, queries: Sequence[str], replicas: Sequence[int],
               args: argparse.Namespace) -> dict[str, dict[int, dict[str, Any]]]:
    from papersearch.serving import launcher

    port = free_port()
    serve = settings.serve.model_copy(update={"metrics_port": free_port(),
                                              "dashboard_port": free_port()})
    settings = settings.model_copy(update={"serve": serve})
    overrides = replica_overrides(settings, port)
    overrides["search"]["rerank_enabled"] = True
    overrides["serve"]["rerank_timeout_s"] = RERANK_BUDGET_S
    results: dict[str, dict[int, dict[str, Any]]] = {path: {} for path in args.paths}
    with local_ray() as temp_dir:
        for path in args.paths:
            deployment, rerank, levels = PATHS[path]
            for k in replicas:
                # Autoscaling off: the bottleneck at k replicas, the other model stage at 1.
                fixed = {name: {"num_replicas": k if name == deployment else 1,
                                "autoscaling_config": None, "max_queued_requests": -1}
                         for name, _, _ in PATHS.values()}
                log(f"served: {path}, {deployment} x{k}")
                launcher.start(settings, num_cpus=args.num_cpus, temp_dir=temp_dir,
                               overrides=overrides, deployment_options=fixed)
                wait_replicas(settings.serve.app_name, deployment, k)
                with SearchClient(f"127.0.0.1:{port}", timeout_s=RERANK_BUDGET_S) as client:
                    wait_serving(client)
                tried = []
                for level in levels:
                    tried.append(saturate(
                        f"127.0.0.1:{port}", f"http://127.0.0.1:{serve.metrics_port}/metrics",
                        queries, rerank, level * k,
                        Window(args.warmup_s, args.seconds, args.intervals),
                        CpuMeter(settings.serve.app_name)))
                    log(f"served: {path} x{k}: {tried[-1]}")
                best = max(tried, key=lambda run: run["qps"])
                results[path][k] = {**best, "levels": [
                    {**{key: run[key] for key in ("concurrency", "qps", "errors", "mean_batch")},
                     "cpu_ms_per_search": run["cpu_ms_per_search"]["total"]} for run in tried
                ]}
    return results


def cpu_bound(cpu_ms: float, floor: float) -> dict[str, float | None]:
    """The QPS all cores busy at ``cpu_ms`` per search would give, and its ratio to the floor
    (None when nothing was measured)."""
    if cpu_ms <= 0:
        return {"cpu_bound_qps": None, "cpu_bound_ratio": None}
    qps = (os.cpu_count() or 1) * 1000.0 / cpu_ms
    return {"cpu_bound_qps": round(qps, 3), "cpu_bound_ratio": round(qps / floor, 3)}


def busy_cores(run: dict[str, Any]) -> dict[str, float]:
    return {role: round(ms * run["qps"] / 1000.0, 3)
            for role, ms in run["cpu_ms_per_search"].items()}


def cpu_ratio(served_ms: dict[str, float], floor_ms: float) -> dict[str, float | None]:
    """CPU per search in the served path (every process but the load generator) against the
    floor's CPU per query."""
    path_ms = served_ms["total"] - served_ms.get("load_generator", 0.0)
    return {"floor_cpu_ms_per_search": floor_ms, "served_path_cpu_ms_per_search":
            round(path_ms, 3), "cpu_ratio": round(path_ms / floor_ms, 3) if floor_ms > 0 else None}


def like_for_like(intervals: Sequence[dict[str, float]], passes: Sequence[dict[str, float]]) -> (
    dict[str, Any]
):
    """The best level's window intervals against the floor's passes, each side's median and
    each side's best: the same statistic of samples of about the same length on both sides."""
    served_qps = [i["qps"] for i in intervals]
    served_cpu = [i["served_path_cpu_ms"] for i in intervals if i["qps"] > 0]
    floor_qps = [p["qps"] for p in passes]
    floor_cpu = [p["cpu_ms"] for p in passes]
    if not served_cpu or not floor_cpu:
        return {"intervals": list(intervals), "floor_passes": list(passes)}
    return {"ratio_median": round(median(served_qps) / median(floor_qps), 3),
            "cpu_ratio_median": round(median(served_cpu) / median(floor_cpu), 3),
            "ratio_best": round(max(served_qps) / max(floor_qps), 3),
            "cpu_ratio_best": round(min(served_cpu) / min(floor_cpu), 3),
            "intervals": list(intervals), "floor_passes": list(passes)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=sorted(PATHS))
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per run")
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--intervals", type=int, default=6,
                        help="equal parts of each window, measured apart too (like_for_like)")
    parser.add_argument("--floor-queries", type=int, default=128)
    parser.add_argument("--floor-seconds", type=float, default=10.0,
                        help="repeat floor passes for at least this long; the best pass counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs given to local Ray")
    args = parser.parse_args(argv)
    settings = Settings()
    # Like for like: the floor never sheds query feedback, and the served path sheds all of it
    # at saturation (search.feedback_max_in_flight; benchmarks/feedback_shedding.py), so both
    # search without it.
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})
    try:
        check_prerequisites(settings.model_copy(update={"search": settings.search.model_copy(
            update={"rerank_enabled": "rerank" in args.paths})}))
        queries = load_queries(settings.corpus_dir, max(args.floor_queries, 512), args.seed)
    except (Unavailable, FileNotFoundError) as error:
        print(f"throughput benchmark: {error}", file=sys.stderr)
        return 2
    floors: dict[str, dict[int, list[Floor]]] = {p: {k: [] for k in args.replicas}
                                                  for p in args.paths}

    def measure_floor() -> None:
        for path in args.paths:
            rerank = PATHS[path][1]
            count = args.floor_queries if rerank else 4 * args.floor_queries
            for k in args.replicas:
                measured = floor_qps(settings, queries[:count], k, rerank, args.floor_seconds)
                floors[path][k].append(measured)
                log(f"floor: {path} with {k} thread(s): {measured.qps:.1f} q/s, "
                    f"{measured.cpu_ms:.2f} CPU ms/q")

    steal = cpu_steal()
    measure_floor()
    served = run_served(settings, queries, args.replicas, args)
    measure_floor()
    result = {
        "cpus": os.cpu_count(),
        "replicas": args.replicas,
        "paths": {
            path: {
                "bottleneck": deployment,
                "runs": [
                    {"replicas": k, "served_qps": served[path][k]["qps"],
                     "floor_qps": best_qps(floors[path][k]),
                     "floor_runs_qps": [f.qps for f in floors[path][k]],
                     "floor_stage_cpu_ms_per_search": [f.stage_cpu_ms for f in floors[path][k]],
                     "ratio": round(served[path][k]["qps"] / best_qps(floors[path][k]), 3),
                     **cpu_bound(served[path][k]["cpu_ms_per_search"]["total"],
                                 best_qps(floors[path][k])),
                     **cpu_ratio(served[path][k]["cpu_ms_per_search"],
                                 min(f.cpu_ms for f in floors[path][k])),
                     "cores_busy": busy_cores(served[path][k]),
                     "like_for_like": like_for_like(served[path][k]["intervals"],
                                                    [p for f in floors[path][k] for p in f.passes]),
                     **{key: served[path][k][key]
                        for key in ("completed", "reranked", "errors", "concurrency",
                                    "cpu_ms_per_search", "ray_cpu_ms_per_search", "levels")}}
                    for k in args.replicas
                ],
            }
            for path, (deployment, _, _) in PATHS.items() if path in args.paths
        },
        "target_ratio": 0.8,
        "target_cpu_ratio": 1.5,
        "seconds": args.seconds,
        "cpu_steal_share": steal(),  # CPU time the hypervisor gave other guests over the run
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

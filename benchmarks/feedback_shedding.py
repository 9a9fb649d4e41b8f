"""Query feedback on by default, shed under load (``search.feedback_max_in_flight``): what the
served searches get at each load, against feedback always off and always on, in one run.

    python benchmarks/feedback_shedding.py [--max-in-flight 8] [--levels 1 4 16 64 256] \
        [--seconds 10] [--rounds 2] > feedback_shedding.json

One Serve app (the default one, its QueryEncoder fixed at one replica, no rerank) is started with
``index.prf_enabled=true`` and ``search.feedback_max_in_flight``. Its gRPC gateway is driven
closed-loop at each level (searches in flight) with three kinds of request, taking turns within
each round so that the machine's drift hits them alike:

- ``off``: ``feedback`` false in every request (the default before, prf_enabled false);
- ``shed``: ``feedback`` unset: the server's default, query feedback, shed while more searches
  than ``--max-in-flight`` are in flight in the gateway;
- ``on``: ``feedback`` true in every request (never shed: what prf_enabled alone gives).

Per level and kind: searches per second (the better of the rounds), errors, the share of
answers that ran feedback (``SearchResult.feedback``) and the p50 latency, and each kind's QPS
over ``off``'s at that level. Expected: at low levels ``shed`` runs feedback nearly always
(it is the ranking ``eval --mode hybrid+feedback`` measures) and costs what ``on`` costs; at
saturating levels it runs it rarely and serves about what ``off`` serves, where ``on`` serves
about half (README, Results: Query feedback under load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

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
from papersearch.pipeline.query import SearchQuery, SearchResult
from papersearch.settings import Settings

KINDS: dict[str, bool | None] = {"off": False, "shed": None, "on": True}
FIXED = {"num_replicas": 1, "autoscaling_config": None, "max_queued_requests": -1}
RERANK = False  # every request's (SearchQuery's default is True), and what the JSON says


async def run_level(target: str, queries: Sequence[str], feedback: bool | None,
                    concurrency: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """``concurrency`` callers search back to back; what completes in the window after the
    warm-up counts, and every error."""
    begin = time.monotonic() + warmup_s
    end = begin + seconds
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "feedback": 0}

    def record(result: SearchResult | None, started: float, now: float) -> None:
        if result is None:  # an error counts wherever it falls: warm-up, window or drain
            counts["errors"] += 1
        elif begin <= now <= end:
            counts["ok"] += 1
            counts["feedback"] += int(result.feedback)
            latencies.append((now - started) * 1000)

    async with AsyncSearchClient(target, timeout_s=60.0) as client:
        await closed_loop(client, queries, concurrency, end,
                          lambda text: SearchQuery(text, rerank=RERANK, feedback=feedback),
                          record)
    return {"qps": round(counts["ok"] / seconds, 2), "errors": counts["errors"],
            "feedback_share": round(counts["feedback"] / counts["ok"], 3) if counts["ok"] else None,
            "p50_ms": round(statistics.median(latencies), 2) if latencies else None}


def measure(target: str, queries: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    levels: dict[str, Any] = {}
    for level in args.levels:
        rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for turn in range(args.rounds):
            order = list(KINDS) if turn % 2 == 0 else list(reversed(KINDS))
            for kind in order:
                rounds[kind].append(asyncio.run(run_level(
                    target, queries, KINDS[kind], level, args.warmup_s, args.seconds)))
                log(f"feedback_shedding: {level} in flight, {kind}: {rounds[kind][-1]}")
        best = {kind: max(runs, key=lambda r: r["qps"]) for kind, runs in rounds.items()}
        off = best["off"]["qps"]
        levels[str(level)] = {
            **{kind: {**run, "rounds_qps": [r["qps"] for r in rounds[kind]]}
               for kind, run in best.items()},
            "qps_over_off": {kind: round(run["qps"] / off, 3) if off else None
                             for kind, run in best.items()},
        }
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--max-in-flight", type=int, default=8,
                        help="search.feedback_max_in_flight for the run")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs given to local Ray")
    args = parser.parse_args(argv)
    base = Settings()
    settings = base.model_copy(update={
        "index": base.index.model_copy(update={"prf_enabled": True}),
        "search": base.search.model_copy(update={"feedback_max_in_flight": args.max_in_flight}),
        "serve": base.serve.model_copy(update={"metrics_port": free_port(),
                                               "dashboard_port": free_port()}),
    })
    try:
        check_prerequisites(settings)
    except Unavailable as error:
        print(f"feedback_shedding: {error}", file=sys.stderr)
        return 2
    queries = load_queries(settings.corpus_dir, args.queries, args.seed)
    steal = cpu_steal()

    from papersearch.serving import launcher

    port = free_port()
    with local_ray() as temp_dir:
        launcher.start(settings, num_cpus=args.num_cpus, temp_dir=temp_dir,
                       overrides=replica_overrides(settings, port),
                       deployment_options={"QueryEncoder": FIXED, "Reranker": FIXED})
        with SearchClient(f"127.0.0.1:{port}") as client:
            wait_serving(client)
        levels = measure(f"127.0.0.1:{port}", queries, args)
    print(json.dumps({
        "settings": {"index.prf_enabled": True, "search.feedback_max_in_flight":
                     args.max_in_flight, "query_encoder_replicas": 1, "rerank": RERANK},
        "seconds": args.seconds, "warmup_s": args.warmup_s, "rounds": args.rounds,
        "levels": levels, "cpu_steal_share": steal(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

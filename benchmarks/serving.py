"""Search latency through the gRPC gateway (Ray Serve app) vs the same pipeline in-process.

    python benchmarks/serving.py [--requests 200] [--warmup 10] [--seed 7] > serving.json

Both paths answer the same list of real queries (the first words of corpus titles, shuffled
with ``--seed``), each with rerank and without, sequentially (one request in flight, so the
figures are latency, not queueing), after warm-up requests. Latency is wall-clock as the caller
sees it: ``await pipeline.search(...)`` in this process for the in-process path, a blocking
``SearchClient.search`` over a gRPC channel for the gateway path. Serving overhead is gateway
p50 - in-process p50 per mode (target: <= 5 ms). Per-stage medians come from each response's
``timings_ms``.

The in-process run goes first against the embedded index; its store is closed (the embedded
shard allows one process) before Ray and the Serve app are started (private Ray temp dir, a
free gRPC port), measured, and stopped. Settings are the usual PAPERSEARCH_* ones; run it from
the repository root like the other commands.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    TITLE_WORDS,
    Unavailable,
    check_prerequisites,
    free_port,
    load_queries,
    log,
    replica_overrides,
    wait_serving,
)

from papersearch.index.errors import CollectionMissing, StoreError
from papersearch.pipeline.query import SearchQuery, SearchResult
from papersearch.settings import Settings

MODES = {"rerank": True, "no_rerank": False}
STAGES = ("encode", "retrieve", "rerank", "total")


def summarise(latencies_ms: Sequence[float], results: Sequence[SearchResult]) -> dict[str, Any]:
    values = np.asarray(latencies_ms, dtype=float)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "n": len(values),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(values.mean()), 3),
        "max_ms": round(float(values.max()), 3),
        "reranked_fraction": round(sum(r.reranked for r in results) / len(results), 3),
    }


def stage_medians(results: Sequence[SearchResult]) -> dict[str, float | None]:
    """Median of each stage over the responses that report it (rerank: reranked ones only)."""
    medians: dict[str, float | None] = {}
    for stage in STAGES:
        values = [r.timings_ms[stage] for r in results if stage in r.timings_ms]
        medians[stage] = round(statistics.median(values), 3) if values else None
    return medians


def measure(
    call: Callable[[SearchQuery], SearchResult], queries: Sequence[str],
    warmup: Sequence[str], label: str,
) -> dict[str, tuple[list[float], list[SearchResult]]]:
    """Warm up, then every query in both modes, one at a time (mode order alternates)."""
    for text in warmup:
        for rerank in MODES.values():
            call(SearchQuery(text, rerank=rerank))
    log(f"{label}: warmed up with {len(warmup)} queries per mode")
    runs: dict[str, tuple[list[float], list[SearchResult]]] = {m: ([], []) for m in MODES}
    order = list(MODES)
    for i, text in enumerate(queries):
        for mode in order if i % 2 == 0 else order[::-1]:
            query = SearchQuery(text, rerank=MODES[mode])
            started = time.perf_counter()
            result = call(query)
            runs[mode][0].append((time.perf_counter() - started) * 1000.0)
            runs[mode][1].append(result)
        if (i + 1) % max(1, len(queries) // 10) == 0:
            log(f"{label}: {i + 1}/{len(queries)}")
    return runs


def run_inprocess(
    settings: Settings, queries: Sequence[str], warmup: Sequence[str]
) -> dict[str, Any]:
    from papersearch.pipeline.factory import build_pipeline

    try:
        pipeline, store = build_pipeline(settings)
    except CollectionMissing as error:
        raise Unavailable(f"{error}: run `papersearch ingest` (or `make run`)") from None
    loop = asyncio.new_event_loop()
    search = pipeline.search
    try:
        with store:
            return measure(lambda q: loop.run_until_complete(search(q)),
                           queries, warmup, "in-process")
    finally:
        loop.close()
        del pipeline, store
        gc.collect()


def throughput(client: Any, queries: Sequence[str], workers: int = 8) -> float:
    """Searches/s (no rerank) with ``workers`` requests in flight, over the query list."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda q: client.search(SearchQuery(q, rerank=False)), queries))
    return round(len(queries) / (time.perf_counter() - started), 2)


def run_gateway(
    settings: Settings, queries: Sequence[str], warmup: Sequence[str], num_cpus: int
) -> dict[str, Any]:
    from papersearch.client import SearchClient
    from papersearch.serving import launcher

    port, proxy_port, http_port = free_port(), free_port(), free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray socket paths are length-limited
    log(f"gateway: starting Ray ({num_cpus} CPUs) and the Serve app on 127.0.0.1:{port}")
    # The same app also behind Serve's built-in gRPC proxy (GatewayDeployment.Search), so both
    # front ends are measured against the same replicas in the same run.
    proxy = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "grpc_options": {"port": proxy_port, "grpc_servicer_functions": [
            "papersearch.api.v1.papersearch_pb2_grpc.add_SearchServiceServicer_to_server"]},
    }
    try:
        launcher.start(settings, num_cpus=num_cpus, temp_dir=temp_dir,
                       overrides=replica_overrides(settings, port), config_overrides=proxy)
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client, \
                SearchClient(f"127.0.0.1:{proxy_port}", timeout_s=60) as via_proxy:
            wait_serving(client)
            return {
                "gateway": measure(client.search, queries, warmup, "gateway"),
                "serve_grpc_proxy": measure(via_proxy.search, queries, warmup, "proxy"),
                "throughput_qps": {
                    "gateway": throughput(client, queries),
                    "serve_grpc_proxy": throughput(via_proxy, queries),
                },
            }
    finally:
        launcher.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured queries per mode")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up queries per mode")
    parser.add_argument("--seed", type=int, default=7, help="query shuffle seed")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs given to local Ray")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0:
        parser.error("--requests must be >= 1 and --warmup >= 0")
    settings = Settings()
    try:
        check_prerequisites(settings)
        listed = load_queries(settings.corpus_dir, args.requests + args.warmup, args.seed)
        queries, warmup = listed[: args.requests], listed[args.requests :]
        inprocess = run_inprocess(settings, queries, warmup)
    except (Unavailable, StoreError, FileNotFoundError) as error:
        print(f"serving benchmark: {error}", file=sys.stderr)
        return 2
    served = run_gateway(settings, queries, warmup, args.num_cpus)
    paths = {"inprocess": inprocess, "gateway": served["gateway"],
             "serve_grpc_proxy": served["serve_grpc_proxy"]}
    summary = {p: {m: summarise(*runs[m]) for m in MODES} for p, runs in paths.items()}
    result = {
        "requests": len(queries),
        "warmup": args.warmup,
        "seed": args.seed,
        "queries_source": f"first {TITLE_WORDS} title words, {settings.corpus_dir}",
        "rerank_enabled": settings.search.rerank_enabled,
        "num_cpus": args.num_cpus,
        **summary,
        "overhead_p50_ms": {
            m: round(summary["gateway"][m]["p50_ms"] - summary["inprocess"][m]["p50_ms"], 3)
            for m in MODES
        },
        "overhead_target": "no_rerank p50 overhead <= one Serve handle hop's p50 "
                           "(benchmarks/hops.py, same session) + 2 ms (issue 16)",
        "proxy_p50_overhead_ms": {
            m: round(summary["serve_grpc_proxy"][m]["p50_ms"] - summary["inprocess"][m]["p50_ms"],
                     3)
            for m in MODES
        },
        "throughput_qps_no_rerank": served["throughput_qps"],
        "stages_ms": {p: {m: stage_medians(runs[m][1]) for m in MODES}
                      for p, runs in paths.items()},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded engine inside the gateway: its calls on the event loop or on a worker thread?

    python benchmarks/engine_thread.py [--searches 400] [--concurrency 8] > engine_thread.json

The gateway (pipeline/index_access.py) runs every engine call on one worker thread. The
alternative is to call the engine on the gateway's event loop (as the Retriever deployment did
before issue 16): no thread hop, but while a search runs, the loop serves nothing else. Both
run here in one process, in one run, against the sample index (``papersearch ingest`` first):
``concurrency`` hybrid searches at a time, precomputed query vectors, and a ticker task that
wakes every millisecond to measure how long the loop was held (its lag: what a gRPC call or a
health check arriving meanwhile waits before it is even read).

Each of the ``concurrency`` callers starts its clock, yields to the loop, then searches: on the
loop a search waits for the searches queued before it (as it would in the gateway), on the
thread for the worker thread; the callers take turns either way (``searches_per_worker``). Before
they yielded, the loop way's first caller ran every search and the others none: its latency
was one search alone, its lag one tick the length of the run. Lag percentiles come with their
sample count, and are null below MIN_LAG_SAMPLES.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from common import Unavailable, check_prerequisites, load_queries, log

from papersearch.encoder.runtime import Encoder
from papersearch.index.query import Hit, SearchFilter
from papersearch.pipeline.factory import open_index
from papersearch.pipeline.index_access import IndexAccess
from papersearch.retriever.opener import CollectionOpener
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

TICK_S = 0.001
MIN_LAG_SAMPLES = 100  # fewer: the p99 is the max, the p50 one or two ticks


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def measure(search: Callable[[str, np.ndarray], Awaitable[list[Hit]]],
                  queries: list[tuple[str, np.ndarray]], concurrency: int) -> dict[str, Any]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lags.append((time.perf_counter() - before - TICK_S) * 1000.0)

    latencies: list[float] = []
    pending = iter(queries)
    done = [0] * concurrency

    async def worker(n: int) -> None:
        for text, vector in pending:
            started = time.perf_counter()
            await asyncio.sleep(0)  # the loop's turn: the other callers, the ticker
            await search(text, vector)
            latencies.append((time.perf_counter() - started) * 1000.0)
            done[n] += 1

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    stop.set()
    await tick
    enough = len(lags) >= MIN_LAG_SAMPLES
    return {
        "searches_per_s": round(len(latencies) / elapsed, 1),
        "searches_per_worker": done,
        "latency_ms": {"p50": round(statistics.median(latencies), 3),
                       "p99": round(percentile(latencies, 99), 3)},
        "loop_lag_ms": {"samples": len(lags),
                        "p50": round(statistics.median(lags), 3) if enough else None,
                        "p99": round(percentile(lags, 99), 3) if enough else None,
                        "max": round(max(lags), 3) if lags else None},
    }


async def run(settings: Settings, count: int, concurrency: int, rounds: int) -> dict[str, Any]:
    encoder = Encoder.from_settings(settings.models)
    texts = load_queries(settings.corpus_dir, count, seed=0)
    vectors = encoder.encode_queries(texts)
    queries = list(zip(texts, vectors, strict=True))
    store = open_index(settings, encoder)
    retriever = Retriever(store)
    access = IndexAccess(CollectionOpener(settings, encoder.dim, encoder.sha256,
                                          make_store=lambda _: store))
    flt = SearchFilter()

    async def on_loop(text: str, vector: np.ndarray) -> list[Hit]:
        return retriever.search(text, vector, mode="hybrid", limit=10, filter=flt)

    async def on_thread(text: str, vector: np.ndarray) -> list[Hit]:
        return (await access.retrieve(text, vector, "hybrid", 10, flt)).hits

    results: dict[str, list[dict[str, Any]]] = {"loop": [], "thread": []}
    try:
        await measure(on_thread, queries[: max(1, count // 10)], concurrency)  # warm-up
        variants = {"loop": on_loop, "thread": on_thread}
        for round_ in range(rounds):  # interleaved, first one then the other: drift hits both
            for name in sorted(variants, reverse=bool(round_ % 2)):
                results[name].append(await measure(variants[name], queries, concurrency))
    finally:
        await access.close()  # and the store it was handed
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--searches", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    try:
        check_prerequisites(settings)
        results = asyncio.run(run(settings, args.searches, args.concurrency, args.rounds))
    except Unavailable as error:
        log(f"engine_thread: {error}")
        return 2

    def median_of(way: str, *keys: str) -> float | None:
        """The median over the rounds (those that have the value: a lag percentile may not)."""
        values = []
        for r in results[way]:
            value: Any = r
            for key in keys:
                value = value[key]
            if value is not None:
                values.append(value)
        return float(statistics.median(values)) if values else None

    def ratio(key: str) -> float | None:
        thread, loop = summary["thread"][key], summary["loop"][key]
        return round(thread / loop, 3) if thread is not None and loop else None

    summary = {
        way: {"latency_p50_ms": median_of(way, "latency_ms", "p50"),
              "searches_per_s": median_of(way, "searches_per_s"),
              "loop_lag_samples": median_of(way, "loop_lag_ms", "samples"),
              "loop_lag_p99_ms": median_of(way, "loop_lag_ms", "p99"),
              "loop_lag_max_ms": median_of(way, "loop_lag_ms", "max")}
        for way in ("loop", "thread")
    }
    print(json.dumps({"searches": args.searches, "concurrency": args.concurrency,
                      "rounds": results, "median": summary,
                      "thread_vs_loop_latency_p50": ratio("latency_p50_ms"),
                      "thread_vs_loop_lag_p99": ratio("loop_lag_p99_ms")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

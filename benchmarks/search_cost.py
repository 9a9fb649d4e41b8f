"""What the hybrid search's options cost an in-process search on the sample index: ``explain``
(index/explain.py) and query feedback (retriever/feedback.py, ``index.prf_*``).

    python benchmarks/search_cost.py

The same queries (the first words of sample titles) searched plain, with explain and with
feedback, the three alternating query by query, the one that goes first rotating (the later
ones found the first one's caches warm), after one unmeasured pass; query encoding is done once
beforehand and not counted. Prints JSON: p50/p90 ms of each, each
option's p50 over the plain search's, and the CPU time per search of each (this process only:
the embedded index runs in it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from common import load_queries

from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.factory import open_index
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="Passes over the queries.")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    queries = load_queries(settings.corpus_dir, args.queries, seed=11)
    vectors = encoder.encode_queries(queries)
    with open_index(settings, encoder) as store:
        retriever = Retriever(store)  # feedback asked per search, with the index.prf_* values
        variants: dict[str, Callable[[str, np.ndarray], object]] = {
            "plain": lambda t, v: retriever.search(t, v, limit=args.top_k, feedback=False),
            "explain": lambda t, v: retriever.search(t, v, limit=args.top_k, explain=True,
                                                     feedback=False),
            "feedback": lambda t, v: retriever.search(t, v, limit=args.top_k, feedback=True),
        }
        wall: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
        for text, vector in zip(queries, vectors, strict=True):  # warm-up, not measured
            for search in variants.values():
                search(text, vector)
        names = list(variants)
        for _ in range(args.rounds):
            for n, (text, vector) in enumerate(zip(queries, vectors, strict=True)):
                for name in names[n % 3:] + names[:n % 3]:
                    search = variants[name]
                    started, started_cpu = time.perf_counter(), time.process_time()
                    search(text, vector)
                    cpu[name] += time.process_time() - started_cpu
                    wall[name].append((time.perf_counter() - started) * 1000)

    def summary(name: str) -> dict[str, float]:
        ordered = sorted(wall[name])
        return {"p50_ms": round(statistics.median(ordered), 3),
                "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
                "cpu_ms_per_search": round(cpu[name] * 1000 / len(ordered), 3)}

    results = {name: summary(name) for name in variants}
    base = results["plain"]["p50_ms"]
    print(json.dumps({
        "queries": len(queries), "rounds": args.rounds, "top_k": args.top_k,
        "fusion": settings.index.fusion, **results,
        "p50_ratio": {name: round(r["p50_ms"] / base, 2) for name, r in results.items()
                      if name != "plain"},
    }, indent=2))


if __name__ == "__main__":
    main()

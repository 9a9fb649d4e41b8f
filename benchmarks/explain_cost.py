"""What ``explain`` costs an in-process hybrid search on the sample index (index/explain.py).

    python benchmarks/explain_cost.py

The same queries (the first words of sample titles) searched with and without explain,
alternating query by query so that the machine's drift hits both alike; query encoding is
done once beforehand and not counted. Prints JSON: p50/p90 ms of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import load_queries

from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.factory import open_index
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    queries = load_queries(settings.corpus_dir, args.queries, seed=11)
    vectors = encoder.encode_queries(queries)
    times: dict[bool, list[float]] = {False: [], True: []}
    with open_index(settings, encoder) as store:
        retriever = Retriever(store)
        for text, vector in zip(queries, vectors, strict=True):
            for explain in (False, True):
                started = time.perf_counter()
                retriever.search(text, vector, mode="hybrid", limit=args.top_k, explain=explain)
                times[explain].append((time.perf_counter() - started) * 1000)

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"p50_ms": round(statistics.median(ordered), 3),
                "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3)}

    plain, explained = summary(times[False]), summary(times[True])
    print(json.dumps({"queries": len(queries), "top_k": args.top_k, "fusion": settings.index.fusion,
                      "plain": plain, "explain": explained,
                      "p50_ratio": round(explained["p50_ms"] / plain["p50_ms"], 2)}, indent=2))


if __name__ == "__main__":
    main()

"""Does the embedded engine's Python binding hold the GIL while it searches?

    python benchmarks/engine_gil.py [--seconds 3] [--rounds 3] > engine_gil.json

The gateway runs the embedded index's calls on one worker thread so that the gRPC front's event
loop is never stuck behind them (pipeline/index_access.py, benchmarks/engine_thread.py). That
only helps if the engine releases the GIL while it works. Here a pure-Python counter thread
counts for ``--seconds`` three ways each round, in an order rotated round by round: alone;
beside a thread that runs the sample index's hybrid prefetch batch (a dense and a BM25 list of
100, the first step of every hybrid search) back to back through qdrant-edge directly; and
beside a thread that sleeps as long as one such batch takes, back to back (a call that releases
the GIL, for comparison). Prints JSON: the counter's rate each way per round (and each round's
order), and its share of the alone rate beside the engine and beside the sleeper (medians over
rounds). A share beside the engine well below the sleeper's: the binding holds the GIL
through the search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import qdrant_edge as qe
from common import Unavailable, check_prerequisites, load_queries, log

from papersearch.encoder.runtime import Encoder
from papersearch.index.schema import DENSE, SPARSE
from papersearch.index.sparse import Bm25Encoder
from papersearch.settings import Settings

DEPTH = 100  # index.prefetch_limit's default


def counted(seconds: float) -> float:
    """Loop iterations per second of a pure-Python counter."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n / seconds


def beside(seconds: float, busy: Callable[[threading.Event], None] | None) -> float:
    """The counter's rate while ``busy`` runs on another thread (until told to stop)."""
    stop = threading.Event()
    other = threading.Thread(target=busy, args=(stop,)) if busy else None
    if other:
        other.start()
    try:
        return counted(seconds)
    finally:
        stop.set()
        if other:
            other.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    settings = Settings()
    try:
        check_prerequisites(settings)
    except Unavailable as error:
        log(f"engine_gil: {error}")
        return 2
    if settings.index.backend != "embedded":
        log("engine_gil: measures the embedded engine (index.backend=embedded)")
        return 2
    index = settings.index
    texts = load_queries(settings.corpus_dir, args.queries, seed=0)
    vectors = Encoder.from_settings(settings.models).encode_queries(texts)
    bm25 = Bm25Encoder(index.bm25_avg_len, index.bm25_query_k3, index.bm25_title_weight,
                       index.bm25_tokenizer)
    batches = []
    for text, vector in zip(texts, vectors, strict=True):
        terms = bm25.query(text)
        batches.append(qe.QueryBatchRequest([
            qe.QueryRequest(limit=DEPTH, query=qe.Query.Nearest(vector.tolist(), DENSE),
                            with_payload=False),
            qe.QueryRequest(limit=DEPTH, query=qe.Query.Nearest(
                qe.SparseVector(list(terms.indices), list(terms.values)), SPARSE),
                with_payload=False)]))
    shard = qe.EdgeShard.load(str(index.data_dir / index.collection))
    try:
        for batch in batches:  # warm-up
            shard.query_batch(batch)
        started = time.perf_counter()
        for batch in batches:
            shard.query_batch(batch)
        batch_s = (time.perf_counter() - started) / len(batches)

        def engine(stop: threading.Event) -> None:
            while not stop.is_set():
                for batch in batches:
                    shard.query_batch(batch)

        def sleeper(stop: threading.Event) -> None:
            while not stop.is_set():
                time.sleep(batch_s)

        ways: list[tuple[str, Callable[[threading.Event], None] | None]] = [
            ("alone", None), ("beside_engine", engine), ("beside_sleeper", sleeper)]
        rounds: list[dict[str, float]] = []
        orders: list[list[str]] = []
        for round_ in range(args.rounds):  # the order rotates: drift hits every way alike
            order = ways[round_ % len(ways):] + ways[: round_ % len(ways)]
            measured = {name: round(beside(args.seconds, busy)) for name, busy in order}
            rounds.append({name: measured[name] for name, _ in ways})
            orders.append([name for name, _ in order])
    finally:
        shard.close()

    def share(name: str) -> float:
        return round(statistics.median(r[name] / r["alone"] for r in rounds), 3)

    result: dict[str, Any] = {
        "batch_ms": round(batch_s * 1000, 3), "seconds": args.seconds,
        "counter_per_s": rounds, "order_per_round": orders,
        "share_beside_engine": share("beside_engine"),
        "share_beside_sleeper": share("beside_sleeper"),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

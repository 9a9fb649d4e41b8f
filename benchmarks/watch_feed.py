"""What a saved-search poll costs the index (gateway/watch.py, Store.indexed_since).

A poll reads the ids and stamps of everything written in the range it asks for (the last
second or so, or the whole look-back window), then fetches the papers it has not seen
(payload and dense vector). This measures both halves on the
embedded engine (a scratch shard of random 384-d vectors, the serving payload indexes) for
windows of several sizes: the idle poll (nothing new) and a poll that finds 64 new papers.
Prints JSON: per window size, the median and p90 milliseconds of each kind of poll.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from papersearch.corpus.paper import Paper
from papersearch.index.edge import EdgeStore
from papersearch.index.sparse import SparseVector
from papersearch.settings import IndexSettings

DIM = 384
NEW = 64


def papers(start: int, count: int) -> list[Paper]:
    return [Paper(id=f"bench-{i}", title=f"paper {i}", abstract="an abstract " * 40)
            for i in range(start, start + count)]


def timed(call: Callable[[], object], rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3),
            "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 100, 1000, 10000],
                        help="points written within the look-back window")
    parser.add_argument("--background", type=int, default=20000,
                        help="older points outside the window")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="watch-feed-") as tmp:
        store = EdgeStore(IndexSettings(data_dir=Path(tmp)))
        store.ensure_collection(DIM, "benchmark")

        def write(batch: list[Paper]) -> None:
            vectors = rng.normal(size=(len(batch), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.upsert(batch, vectors, [SparseVector((), ())] * len(batch))

        for start in range(0, args.background, 1000):
            write(papers(start, min(1000, args.background - start)))
        store.optimize()
        written = args.background
        time.sleep(0.01)
        for window in args.windows:
            since = time.time_ns() // 1_000_000
            for start in range(written, written + window, 1000):
                write(papers(start, min(1000, written + window - start)))
            written += window
            known = store.indexed_since(since, None).window
            assert len(known) == window, (len(known), window)
            poll = functools.partial(store.indexed_since, since, known)
            idle = timed(poll, args.rounds)
            write(papers(written, NEW))
            written += NEW
            with_new = timed(poll, args.rounds)
            assert len(store.indexed_since(since, known).papers) == NEW
            known = store.indexed_since(since, None).window
            results[str(window)] = {"idle_poll": idle, f"poll_with_{NEW}_new": with_new}
        store.close()
    print(json.dumps({"dim": DIM, "background_points": args.background,
                      "rounds": args.rounds, "window_points": results}, indent=2))


if __name__ == "__main__":
    main()

"""Ingest throughput vs the encoder's own throughput, same papers, same run.

    python benchmarks/ingest.py [--papers N] [--repeat 3] > ingest.json

The encoder figure is ``Encoder.encode_documents`` alone over the papers in ingest-sized
batches; the ingest figure is the whole ``Ingester.ingest`` path (batching, BM25 terms,
encoding, upsert into a fresh embedded qdrant-edge shard, final optimize). Their ratio is the
share of encoder throughput that ingestion keeps (target >= 0.85). Runs alternate and the best
of ``--repeat`` is kept for each, so the shared machine's noise hits both alike.

With ``--ray 1,2``, each round also runs ``papersearch ingest --ray``'s path (ingest/
distributed.py) with 1 and then 2 encoder actors on one local Ray instance (started once, all
this machine's CPUs), actor start-up and model loading included: ``ray_over_single`` is its
rate over the one-process ingest's (target on one machine: >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import Any

from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.index.factory import open_store
from papersearch.index.store import Store
from papersearch.ingest.pipeline import Ingester, Ingests
from papersearch.settings import Settings


def encode_only(encoder: Encoder, papers: Sequence[Paper], batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(papers), batch_size):
        encoder.encode_documents([p.text for p in papers[start : start + batch_size]])
    return time.perf_counter() - started


def ingest_once(settings: Settings, papers: Sequence[Paper],
                make: Callable[[Store], Ingests]) -> float:
    """Seconds for ``make(store)`` to ingest ``papers`` into a fresh embedded shard."""
    with tempfile.TemporaryDirectory() as data_dir:
        # embedded whatever the settings say: a server backend would have written the user's
        # own collection
        index = settings.index.model_copy(update={"backend": "embedded",
                                                  "data_dir": Path(data_dir)})
        with open_store(index) as store:
            ingester = make(store)
            started = time.perf_counter()
            written, _ = ingester.ingest(papers, progress=False)
            elapsed = time.perf_counter() - started
            if written != len(papers) or store.count() != len(papers):
                raise RuntimeError(f"ingested {written}, stored {store.count()} of {len(papers)}")
    return elapsed


def one_process(settings: Settings, encoder: Encoder) -> Callable[[Store], Ingests]:
    return lambda store: Ingester(store, encoder, settings.models.batch_size)


def on_ray(settings: Settings, encoder: Encoder, encoders: int) -> Callable[[Store], Ingests]:
    from papersearch.ingest.distributed import RayIngester

    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"ray_encoders": encoders})})
    return lambda store: RayIngester(store, encoder, settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=591, help="papers from the corpus")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=None, help="default: settings corpus_dir")
    parser.add_argument("--ray", default="", help="also through Ray with these encoder counts, "
                                                  "e.g. 1,2")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.ray.split(",") if n]
    settings = Settings()
    papers = list(islice(read_corpus(args.corpus or settings.corpus_dir), args.papers))
    encoder = Encoder.from_settings(settings.models)
    batch = settings.models.batch_size
    encode_only(encoder, papers[:batch], batch)  # warm-up
    encode_s: list[float] = []
    ingest_s: list[float] = []
    ray_s: dict[int, list[float]] = {n: [] for n in counts}
    with ExitStack() as stack:
        if counts:
            from papersearch.ingest.distributed import ray_cluster

            stack.enter_context(ray_cluster(None))
        for _ in range(args.repeat):
            encode_s.append(encode_only(encoder, papers, batch))
            ingest_s.append(ingest_once(settings, papers, one_process(settings, encoder)))
            for n in counts:
                ray_s[n].append(ingest_once(settings, papers, on_ray(settings, encoder, n)))
            print(f"encode {encode_s[-1]:.2f}s ingest {ingest_s[-1]:.2f}s ray "
                  f"{ {n: round(v[-1], 2) for n, v in ray_s.items()} }", file=sys.stderr)
    encoder_rate = len(papers) / min(encode_s)
    ingest_rate = len(papers) / min(ingest_s)
    ray_rates = {n: len(papers) / min(v) for n, v in ray_s.items()}
    result: dict[str, Any] = {
        "papers": len(papers),
        "batch_size": batch,
        "precision": settings.models.precision,
        "intra_op_threads": settings.models.intra_op_threads,
        "backend": "embedded",  # a scratch shard, whatever the settings name
        "encoder_papers_per_s": round(encoder_rate, 2),
        "ingest_papers_per_s": round(ingest_rate, 2),
        "ingest_over_encoder": round(ingest_rate / encoder_rate, 3),
        "runs_s": {"encode": [round(x, 3) for x in encode_s],
                   "ingest": [round(x, 3) for x in ingest_s],
                   **{f"ray_{n}": [round(x, 3) for x in v] for n, v in ray_s.items()}},
    }
    if counts:
        result["cpus"] = os.cpu_count()
        result["ray_papers_per_s"] = {n: round(r, 2) for n, r in ray_rates.items()}
        result["ray_over_single"] = {n: round(r / ingest_rate, 3) for n, r in ray_rates.items()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

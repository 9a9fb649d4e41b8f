"""Which pseudo-relevance feedback (retriever/feedback.py), chosen on the tuning sets.

    python benchmarks/feedback_grid.py > docs/tune/feedback.json

Per judged set and query: one plain hybrid pass (feedback off, the configured fusion) gives
the top papers (Store.feedback_program); then the dense list for every dense-feedback variant
(papers 3, 5, 10 x weight 0.3, 0.6, 1.0) and the BM25 list for every BM25-feedback variant
(papers 3, 5, 10 x terms 10, 20 x weight 0.2, 0.5), plus the plain lists. Every pairing of a
dense list with a BM25 list (plain ones included) is fused as the Store fuses (index/fusion.py)
and scored, with the dense list weighted as configured (index.fusion_dense_weight) and at each
of ``SECOND_PASS_WEIGHTS``: do the expanded lists deserve another weight than the plain ones?
(The Store has no second-pass weight; the plain pairing keeps the configured one.) The choice:
the best mean nDCG@10 over the tuning sets (settings tune_sets) among pairings no worse than no
feedback on any of them; the held-out sets (held_out_sets) judge it with per-query wins,
losses and a paired permutation test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.harness import open_dataset_index
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.index.fusion import Ranked, convex
from papersearch.index.query import SearchRequest
from papersearch.index.schema import from_payload
from papersearch.index.store import Store
from papersearch.retriever.feedback import expand_dense, expand_sparse
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

DENSE = [(docs, weight) for docs in (3, 5, 10) for weight in (0.3, 0.6, 1.0)]
SPARSE = [(docs, terms, weight) for docs in (3, 5, 10) for terms in (10, 20)
          for weight in (0.2, 0.5)]
SECOND_PASS_WEIGHTS = (0.4, 0.5, 0.6, 0.7, 0.8)
FIRST_PASS = max(d for d, _ in DENSE)
RESULTS = 100


def lists(dataset: EvalDataset, settings: Settings, encoder: Encoder) -> (
    dict[str, dict[str, Ranked]]
):
    """Per query: list name -> ranked (id, score), ``prefetch_limit`` deep."""
    store = open_dataset_index(dataset, settings, encoder)
    try:
        retriever = Retriever(store)
        depth = settings.index.prefetch_limit
        ids = list(dataset.queries)
        vectors = encoder.encode_queries([dataset.queries[q] for q in ids])
        out: dict[str, dict[str, Ranked]] = {}
        for qid, vector in tqdm(zip(ids, vectors, strict=True), total=len(ids),
                                desc=dataset.name, unit="query", file=sys.stderr):
            out[qid] = _query_lists(store, retriever, dataset.queries[qid], vector, depth)
        return out
    finally:
        store.close()


def _query_lists(store: Store, retriever: Retriever, text: str, vector: Any,
                 depth: int) -> dict[str, Ranked]:
    query = retriever.bm25.query(text)
    found: dict[str, Ranked] = {}

    def search(name: str, request: SearchRequest) -> None:
        found[name] = [(h.paper.id, h.score) for h in store.query(request)]

    search("dense plain", SearchRequest(mode="dense", dense=vector, limit=depth))
    if len(query) == 0:  # only stopwords: the Retriever searches dense alone
        return found
    search("bm25 plain", SearchRequest(mode="sparse", sparse=query, limit=depth))
    top = store.execute(store.feedback_program(SearchRequest(dense=vector, sparse=query,
                                                             limit=FIRST_PASS)))
    for docs, weight in DENSE:
        dense = expand_dense(tuple(vector.tolist()), [r.dense for r in top[:docs]
                                                      if r.dense is not None], weight)
        search(f"dense docs={docs} weight={weight}",
               SearchRequest(mode="dense", dense=dense, limit=depth))
    texts = [from_payload(r.payload).text for r in top if r.payload]
    documents = retriever.bm25.documents(texts)
    for docs, terms, weight in SPARSE:
        expanded = expand_sparse(query, documents[:docs], terms, weight)
        search(f"bm25 docs={docs} terms={terms} weight={weight}",
               SearchRequest(mode="sparse", sparse=expanded, limit=depth))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    settings = Settings()
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})
    encoder = Encoder.from_settings(settings.models)
    tuning = [load_dataset(p) for p in settings.tune_sets]
    held_out = [load_dataset(p) for p in settings.held_out_sets]
    sets = [*tuning, *held_out]
    runs = {d.name: lists(d, settings, encoder) for d in sets}
    weight, depth = settings.index.fusion_dense_weight, settings.index.prefetch_limit
    dense_names = ["dense plain", *(f"dense docs={d} weight={w}" for d, w in DENSE)]
    sparse_names = ["bm25 plain", *(f"bm25 docs={d} terms={t} weight={w}" for d, t, w in SPARSE)]

    def score(dense: str, sparse: str, second: float) -> dict[str, Report]:
        return {
            d.name: evaluate({
                q: [i for i, _ in (convex([found[dense], found[sparse]], [second, 1 - second],
                                          depth) if sparse in found else found[dense])][:RESULTS]
                for q, found in runs[d.name].items()}, d.qrels)
            for d in sets
        }

    plain_key = ("dense plain", "bm25 plain", weight)
    reports = {(a, b, w): score(a, b, w)
               for a, b in itertools.product(dense_names, sparse_names)
               for w in sorted({weight, *SECOND_PASS_WEIGHTS})
               if (a, b) != plain_key[:2] or w == weight}
    names = [d.name for d in sets]
    tuning_names, held_names = names[: len(tuning)], names[len(tuning):]

    def mean(by_set: Mapping[str, Report], among: list[str]) -> float:
        return sum(by_set[n].ndcg_at_10 for n in among) / len(among)

    plain = reports[plain_key]
    eligible = [k for k, r in reports.items()
                if all(r[n].ndcg_at_10 >= plain[n].ndcg_at_10 for n in tuning_names)]
    chosen = max(eligible, key=lambda k: mean(reports[k], tuning_names))
    judged = {n: paired(plain[n].per_query_ndcg_at_10,
                        reports[chosen][n].per_query_ndcg_at_10) for n in names}
    print(json.dumps({
        "fusion": settings.index.fusion, "fusion_dense_weight": weight, "prefetch_limit": depth,
        "tuning_sets": tuning_names, "held_out_sets": held_names,
        "chosen": {"dense": chosen[0], "bm25": chosen[1], "fusion_dense_weight": chosen[2],
                   "against_no_feedback": {n: p.to_dict() for n, p in judged.items()},
                   "held_out_agree": all(judged[n].mean_difference > 0 for n in held_names)},
        "pairings": sorted(({"dense": a, "bm25": b, "fusion_dense_weight": w,
                             "ndcg@10": {n: round(r.ndcg_at_10, 4) for n, r in by.items()},
                             "tuning_mean": round(mean(by, tuning_names), 4),
                             "held_out_mean": round(mean(by, held_names), 4)}
                            for (a, b, w), by in reports.items()),
                           key=lambda row: -float(row["tuning_mean"])),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

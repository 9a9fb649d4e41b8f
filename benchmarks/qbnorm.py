"""Hubness, and querybank normalisation (evaluation/qbnorm.py), on the judged sets.

    python benchmarks/qbnorm.py > docs/tune/qbnorm.json

1. Hubness: the k-occurrence N_10 of the dense, BM25 and hybrid (configured fusion) top 10
   over many queries: per judged set its own queries plus SYNTHETIC queries made from the
   collection's papers (the title, or the first sentence when there is none, 12 words at most;
   the paper it came from left out of its own list), and on the sample corpus index
   (``index.data_dir``) the judged sets' queries plus titles of its own papers (likewise). Beside
   each: the same number of queries drawing their top 10 uniformly at random.
2. QB-Norm with the dynamic inverted softmax on each query's dense candidates
   (``prefetch_limit`` deep; the lists evaluation/fusion_tuning.fetch_lists fetches), dense alone
   and fused with BM25 as the Store fuses (index/fusion.convex, ``fusion_dense_weight``). Two
   querybanks, neither from a held-out set's queries: ``titles`` = the first half of the
   collection's synthetic queries (a bank query's own paper not counted against it), and
   ``tuning-queries`` = the CACM and Cranfield queries other than the evaluated set's own.
   Beta and bank are chosen on the tuning sets (best mean nDCG@10, no worse on either), per mode;
   the held-out sets judge the choice (wins, losses, paired permutation p).
3. Hubness after: the dense top 10 of the second half of the synthetic queries plus the judged
   queries (not in the bank), with and without the chosen QB-Norm.
4. Cost: per query, the online rescoring (one fetch of the candidates' vectors from the index,
   the bank x candidates product, the activation check) and with precomputed penalties.

Outcome (docs/tune/qbnorm.json): no candidate qualified, so QB-Norm is not a search option.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from papersearch.corpus.paper import Paper, point_id
from papersearch.corpus.readers import read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.fusion_tuning import Lists, fetch_lists
from papersearch.evaluation.harness import open_dataset_index
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.evaluation.qbnorm import (
    QueryBank,
    dis_rescore,
    hubness,
    k_occurrence,
    uniform_hubness,
)
from papersearch.index.factory import open_store
from papersearch.index.fusion import Ranked, convex
from papersearch.index.plan import Fetch, Program, Record
from papersearch.index.query import Mode
from papersearch.index.schema import from_payload
from papersearch.index.store import Store
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

SYNTHETIC = 2000  # synthetic queries per judged set: half the bank, half the hubness probe
CORPUS_TITLES = 1000
WORDS = 12
BETAS = (5.0, 10.0, 20.0, 40.0, 80.0)
RULES = ("dis", "is")
K = 10
RESULTS = 100
COST_QUERIES = 100
SEED = 17


@dataclass
class SetData:
    dataset: EvalDataset
    judged: Lists  # the judged queries' dense, BM25 and configured-hybrid lists
    synthetic: Lists  # the synthetic queries' lists
    sources: Mapping[str, str]  # synthetic query id -> the paper it was made from
    doc_ids: list[str]
    doc_vectors: np.ndarray
    query_vectors: Mapping[str, np.ndarray]  # judged and synthetic, by query id


def synthetic_query(paper: Paper) -> str:
    text = paper.title.strip() or re.split(r"(?<=[.?!])\s", paper.abstract.strip(), maxsplit=1)[0]
    return " ".join(text.split()[:WORDS])


def synthetic_queries(papers: Sequence[Paper], count: int) -> dict[str, str]:
    """``count`` papers at random (fixed seed) -> {"synth-<paper id>": query}."""
    chosen = random.Random(SEED).sample(list(papers), min(count, len(papers)))
    queries = {f"synth-{p.id}": synthetic_query(p) for p in chosen}
    return {q: t for q, t in queries.items() if t}


def vectors_of(store: Store, paper_ids: Sequence[str]) -> np.ndarray:
    """The stored dense vectors of ``paper_ids``, in that order, fetched in chunks."""
    by_id: dict[str, list[float]] = {}
    for start in range(0, len(paper_ids), 256):
        chunk = paper_ids[start:start + 256]
        records = store.execute(_fetch(tuple(point_id(p) for p in chunk)))
        for record in records:
            if record.payload and record.dense is not None:
                by_id[from_payload(record.payload).id] = record.dense
    return np.array([by_id[p] for p in paper_ids], dtype=np.float32)


def _fetch(point_ids: tuple[str, ...]) -> Program[list[Record]]:
    records: list[Record] = yield Fetch(point_ids, payload=True, dense=True)
    return records


def load_set(dataset: EvalDataset, settings: Settings, encoder: Encoder) -> SetData:
    papers = list(dataset.papers())
    queries = synthetic_queries(papers, SYNTHETIC)
    sources = {q: q.removeprefix("synth-") for q in queries}
    judged = fetch_lists(dataset, settings, encoder)
    synthetic = fetch_lists(replace(dataset, queries=queries, qrels={}), settings, encoder)
    all_queries = {**dataset.queries, **queries}
    ids = list(all_queries)
    query_vectors = dict(zip(ids, encoder.encode_queries([all_queries[q] for q in ids]),
                             strict=True))
    store = open_dataset_index(dataset, settings, encoder)
    try:
        doc_ids = [p.id for p in papers]
        doc_vectors = vectors_of(store, doc_ids)
    finally:
        store.close()
    return SetData(dataset, judged, synthetic, sources, doc_ids, doc_vectors, query_vectors)


def without_source(lists: Mapping[str, Ranked], sources: Mapping[str, str]) -> (
    dict[str, list[str]]
):
    return {q: [d for d, _ in ranked if d != sources.get(q)] for q, ranked in lists.items()}


def fused(dense: Ranked, sparse: Ranked, weight: float, depth: int) -> list[str]:
    return [i for i, _ in convex([dense, sparse], [weight, 1 - weight], depth)][:RESULTS]


def hub_row(run: Mapping[str, Sequence[str]], documents: Sequence[str]) -> dict[str, Any]:
    return hubness(run, documents, K).to_dict()


def hubness_before(data: SetData) -> dict[str, Any]:
    """N_10 of every mode over the judged and all synthetic queries, and uniform draws."""
    lists = {**{q: (data.judged.dense[q], data.judged.sparse[q], data.judged.baseline[q])
                for q in data.judged.dense},
             **{q: (data.synthetic.dense[q], data.synthetic.sparse[q], data.synthetic.baseline[q])
                for q in data.synthetic.dense}}
    runs = {
        "dense": without_source({q: v[0] for q, v in lists.items()}, data.sources),
        "bm25": without_source({q: v[1] for q, v in lists.items()}, data.sources),
        "hybrid": without_source({q: [(d, 0.0) for d in v[2]] for q, v in lists.items()},
                                 data.sources),
    }
    out = {mode: hub_row(run, data.doc_ids) for mode, run in runs.items()}
    out["uniform"] = uniform_hubness(len(lists), len(data.doc_ids), K, SEED).to_dict()
    return out


def banks(data: SetData, tuning_queries: Mapping[str, Mapping[str, np.ndarray]]) -> (
    dict[str, tuple[np.ndarray, tuple[str | None, ...]]]
):
    """Bank name -> (vectors, sources)."""
    synth = list(data.synthetic.dense)
    half = synth[: len(synth) // 2]
    others = [v for name, vectors in tuning_queries.items() if name != data.dataset.name
              for v in vectors.values()]
    return {
        "titles": (np.array([data.query_vectors[q] for q in half]),
                   tuple(data.sources[q] for q in half)),
        "tuning-queries": (np.array(others), tuple(None for _ in others)),
    }


def prepare(bank: QueryBank, d: SetData, rule: str) -> tuple[QueryBank, frozenset[str]]:
    """The activation set of ``rule``: dis = the bank queries' top-1 papers; is = every paper
    (the plain inverted softmax, every query renormalised)."""
    if rule == "is":
        return bank, frozenset(d.doc_ids)
    return bank, bank.activation_set(d.doc_ids, d.doc_vectors)


def qb_lists(dense: Mapping[str, Ranked], penalties: Mapping[str, float],
             activation: frozenset[str]) -> dict[str, list[tuple[str, float]]]:
    return {q: dis_rescore(ranked, penalties, activation) for q, ranked in dense.items()}


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    settings = Settings()
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})
    encoder = Encoder.from_settings(settings.models)
    weight, depth = settings.index.fusion_dense_weight, settings.index.prefetch_limit
    tuning = [load_dataset(p) for p in settings.tune_sets]
    held_out = [load_dataset(p) for p in settings.held_out_sets]
    names = [d.name for d in [*tuning, *held_out]]
    tuning_names, held_names = names[: len(tuning)], names[len(tuning):]
    data = {d.name: load_set(d, settings, encoder) for d in [*tuning, *held_out]}
    tuning_queries = {n: {q: data[n].query_vectors[q] for q in data[n].dataset.queries}
                      for n in tuning_names}

    before = {n: hubness_before(data[n]) for n in names}
    reports: dict[tuple[str, str, float | None], dict[str, Report]] = {}
    prepared: dict[tuple[str, str, float], tuple[dict[str, float], frozenset[str]]] = {}
    for n in names:
        d = data[n]
        qrels = d.dataset.qrels
        reports.setdefault(("dense", "none", None), {})[n] = evaluate(
            {q: [i for i, _ in r][:RESULTS] for q, r in d.judged.dense.items()}, qrels)
        reports.setdefault(("hybrid", "none", None), {})[n] = evaluate(
            {q: fused(d.judged.dense[q], d.judged.sparse[q], weight, depth)
             for q in d.judged.dense}, qrels)
        reports.setdefault(("hybrid (the Store's own search)", "none", None), {})[n] = evaluate(
            d.judged.baseline, qrels)
        for (source, (vectors, sources)), rule, beta in itertools.product(
                banks(d, tuning_queries).items(), RULES, BETAS):
            name = f"{source} {rule}"
            bank, activation = prepare(QueryBank(vectors, sources, beta), d, rule)
            penalties = dict(zip(d.doc_ids, bank.penalties(d.doc_ids, d.doc_vectors).tolist(),
                                 strict=True))
            prepared[(n, name, beta)] = (penalties, activation)
            dense = qb_lists(d.judged.dense, penalties, activation)
            reports.setdefault(("dense", name, beta), {})[n] = evaluate(
                {q: [i for i, _ in r][:RESULTS] for q, r in dense.items()}, qrels)
            reports.setdefault(("hybrid", name, beta), {})[n] = evaluate(
                {q: fused(dense[q], d.judged.sparse[q], weight, depth) for q in dense}, qrels)

    def mean(by_set: Mapping[str, Report], among: Sequence[str]) -> float:
        return sum(by_set[s].ndcg_at_10 for s in among) / len(among)

    verdicts: dict[str, Any] = {}
    for mode in ("dense", "hybrid"):
        plain = reports[(mode, "none", None)]
        eligible = [k for k in reports if k[0] == mode and k[1] != "none"
                    and all(reports[k][s].ndcg_at_10 >= plain[s].ndcg_at_10
                            for s in tuning_names)]
        best_any = max((k for k in reports if k[0] == mode and k[1] != "none"),
                       key=lambda k: mean(reports[k], tuning_names))
        chosen = max(eligible, key=lambda k: mean(reports[k], tuning_names), default=None)
        judged_key = chosen or best_any
        judged = {s: paired(plain[s].per_query_ndcg_at_10,
                            reports[judged_key][s].per_query_ndcg_at_10) for s in names}
        per_bank: dict[str, Any] = {}
        for bank_name in sorted({k[1] for k in reports if k[0] == mode and k[1] != "none"}):
            best = max((k for k in reports if k[0] == mode and k[1] == bank_name),
                       key=lambda k: mean(reports[k], tuning_names))
            per_bank[bank_name] = {"beta": best[2], "against_plain": {
                s: paired(plain[s].per_query_ndcg_at_10,
                          reports[best][s].per_query_ndcg_at_10).to_dict() for s in names}}
        verdicts[mode] = {
            "chosen": None if chosen is None else {"bank": chosen[1], "beta": chosen[2]},
            "judged": {"bank": judged_key[1], "beta": judged_key[2],
                       "note": "the choice" if chosen else
                       "no candidate was no worse on every tuning set: the best tuning mean"},
            "against_plain": {s: p.to_dict() for s, p in judged.items()},
            "held_out_agree": all(judged[s].mean_difference > 0 for s in held_names),
            "best_beta_per_bank": per_bank,
        }

    # hubness after: the probe half of the synthetic queries and the judged queries, for each
    # bank with its best beta for dense on the tuning sets
    after: dict[str, Any] = {}
    for bank_name, best in verdicts["dense"]["best_beta_per_bank"].items():
        after[bank_name] = {n: hubness_after(data[n], *prepared[(n, bank_name, best["beta"])])
                            for n in names}
        after[bank_name]["beta"] = best["beta"]
    key = verdicts["dense"]["judged"]
    titles = {"bank": "titles dis",
              "beta": verdicts["dense"]["best_beta_per_bank"]["titles dis"]["beta"]}
    cost = [measure_cost(data[held_names[0]], settings, encoder, tuning_queries, key),
            measure_cost(data[tuning_names[0]], settings, encoder, tuning_queries, titles)]
    print(json.dumps({
        "fusion": settings.index.fusion, "fusion_dense_weight": weight, "prefetch_limit": depth,
        "tuning_sets": tuning_names, "held_out_sets": held_names, "k": K,
        "synthetic_queries_per_set": SYNTHETIC, "betas": list(BETAS),
        "hubness_corpus": corpus_hubness(settings, encoder, data),
        "hubness_judged_sets": before,
        "verdicts": verdicts,
        "hubness_after": after,
        "cost_ms_per_query": cost,
        "grid": [{"mode": m, "bank": b, "beta": beta,
                  "ndcg@10": {s: round(r.ndcg_at_10, 4) for s, r in by.items()},
                  "recall@100": {s: round(r.recall_at_100, 4) for s, r in by.items()},
                  "tuning_mean": round(mean(by, tuning_names), 4),
                  "held_out_mean": round(mean(by, held_names), 4)}
                 for (m, b, beta), by in reports.items()],
    }, indent=2))
    return 0


def hubness_after(d: SetData, penalties: Mapping[str, float], activation: frozenset[str]) -> (
    dict[str, Any]
):
    synth = list(d.synthetic.dense)
    probe = {**d.judged.dense, **{q: d.synthetic.dense[q] for q in synth[len(synth) // 2:]}}
    plain_run = without_source(probe, d.sources)
    qb_run = without_source(qb_lists(probe, penalties, activation), d.sources)
    counts = k_occurrence(plain_run, d.doc_ids, K)
    hubs = {d.doc_ids[i] for i in np.argsort(-counts)[: max(1, len(counts) // 100)]}
    activated = sum(1 for r in probe.values() if r and r[0][0] in activation)
    return {"dense": hub_row(plain_run, d.doc_ids), "dense_qbnorm": hub_row(qb_run, d.doc_ids),
            "activation_set": len(activation),
            "queries_renormalised_share": round(activated / len(probe), 3),
            "top1pct_hubs_in_activation_set": round(len(hubs & activation) / len(hubs), 3)}


def corpus_hubness(settings: Settings, encoder: Encoder, data: Mapping[str, SetData]) -> (
    dict[str, Any]
):
    """The sample corpus index: the judged sets' queries (unrelated to it) and titles of its
    own papers (each paper left out of its own list), in each mode."""
    papers = list(read_corpus(settings.corpus_dir))
    titles = synthetic_queries(papers, CORPUS_TITLES)
    judged = {f"{n}-{q}": t for n, d in data.items() for q, t in d.dataset.queries.items()}
    queries = {**judged, **titles}
    sources = {q: q.removeprefix("synth-") for q in titles}
    ids = list(queries)
    vectors = encoder.encode_queries([queries[q] for q in ids])
    store = open_store(settings.index)
    try:
        store.ensure_collection(encoder.dim, encoder.sha256, create=False)
        retriever = Retriever(store)
        runs: dict[str, dict[str, list[str]]] = {"dense": {}, "bm25": {}, "hybrid": {}}
        for q, vector in tqdm(zip(ids, vectors, strict=True), total=len(ids), desc="corpus",
                              unit="query", file=sys.stderr):
            modes: tuple[tuple[Mode, str], ...] = (("dense", "dense"), ("sparse", "bm25"),
                                                   ("hybrid", "hybrid"))
            for mode, name in modes:
                hits = retriever.search(queries[q], vector, mode=mode, limit=K + 1)
                runs[name][q] = [h.paper.id for h in hits if h.paper.id != sources.get(q)]
        documents = [p.id for p in papers]
        out: dict[str, Any] = {"documents": len(documents), "indexed": store.count(),
                               "judged_queries": len(judged), "title_queries": len(titles)}
    finally:
        store.close()
    for name, run in runs.items():
        out[name] = hub_row(run, documents)
        out[f"{name}_unrelated_queries_only"] = hub_row(
            {q: r for q, r in run.items() if q in judged}, documents)
    out["uniform"] = uniform_hubness(len(ids), len(documents), K, SEED).to_dict()
    out["uniform_unrelated_queries_only"] = uniform_hubness(len(judged), len(documents), K,
                                                            SEED).to_dict()
    return out


def measure_cost(d: SetData, settings: Settings, encoder: Encoder,
                 tuning_queries: Mapping[str, Mapping[str, np.ndarray]],
                 key: Mapping[str, Any]) -> dict[str, Any]:
    """ms per query of the rescoring alone: online (fetch the candidates' stored vectors, the
    bank x candidates product) and with every document's penalty precomputed."""
    bank_name, rule = str(key["bank"]).split()
    vectors, sources = banks(d, tuning_queries)[bank_name]
    bank = QueryBank(vectors, sources, float(key["beta"]))
    started = time.perf_counter()
    activation = prepare(bank, d, rule)[1]
    penalties = dict(zip(d.doc_ids, bank.penalties(d.doc_ids, d.doc_vectors).tolist(),
                         strict=True))
    setup = time.perf_counter() - started
    queries = list(d.judged.dense)[:COST_QUERIES]
    store = open_dataset_index(d.dataset, settings, encoder)
    try:
        started = time.perf_counter()
        for q in queries:
            ranked = d.judged.dense[q]
            if ranked and ranked[0][0] in activation:
                ids = [i for i, _ in ranked]
                cand = vectors_of(store, ids)
                online = dict(zip(ids, bank.penalties(ids, cand).tolist(), strict=True))
                dis_rescore(ranked, online, activation)
        online_ms = (time.perf_counter() - started) * 1000 / len(queries)
    finally:
        store.close()
    started = time.perf_counter()
    for q in queries:
        dis_rescore(d.judged.dense[q], penalties, activation)
    cached_ms = (time.perf_counter() - started) * 1000 / len(queries)
    return {"set": d.dataset.name, "queries": len(queries), "bank_size": len(vectors),
            "online_fetch_and_rescore": round(online_ms, 3),
            "precomputed_penalties": round(cached_ms, 4),
            "precompute_whole_collection_s": round(setup, 3),
            "documents": len(d.doc_ids)}


if __name__ == "__main__":
    sys.exit(main())

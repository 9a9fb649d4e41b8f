"""Does a text's vector depend on the texts it is encoded with? (int8 embedder)

    python benchmarks/batch_independence.py > docs/tune/batch_independence.json

The int8 graph quantizes its activations dynamically: one scale per tensor, computed over the
whole batch (padding included). Run batched, a text's vector moves a little with its
batch-mates: in serving, a query coalesced with other users' queries would get a slightly
different vector (and ranking) than the same query sent alone; at ingest, a paper's vector
would depend on which papers share its batch. This script measures how much, and what running
each text alone (``models.int8_alone``, the default) costs against batches.

For every judged set and the known-item set: each query is encoded in batches (``batch``, the
configured ``models.batch_size``, length-sorted as the runtime does) and alone, with the
fp32 graph as reference; the set's papers are encoded once in batches (as ingest does) and
ranked by exact cosine. Reported per set: cosines between the two int8 query vectors, and of
each to fp32; the share of queries whose top 10 differs (in order) and the mean share of the top 10
that both hold; dense nDCG@10 of each, with wins,
losses and a paired permutation test. Then papers: ``--papers`` abstracts of the sample corpus
batched and alone. Then speed, one thread: queries and papers at batch 1 and at ``batch``,
alternated over ``--rounds`` rounds in the same run; the ratios are what matter here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from papersearch.corpus.readers import read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.models.manifest import model_dir
from papersearch.settings import Settings

DEPTH = 100


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=256, help="sample abstracts compared")
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds, alternated")
    return parser.parse_args(argv)


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of unit vectors: the lowest, the 1st percentile and the mean."""
    cos = np.sum(a * b, axis=1)
    return {"min": round(float(cos.min()), 5), "p1": round(float(np.percentile(cos, 1)), 5),
            "mean": round(float(cos.mean()), 5)}


def ranked(queries: np.ndarray, papers: np.ndarray, ids: Sequence[str]) -> list[list[str]]:
    top = np.argsort(-(queries @ papers.T), axis=1, kind="stable")[:, :DEPTH]
    return [[ids[i] for i in row] for row in top]


def one_set(dataset: EvalDataset, batched: Encoder, alone: Encoder, fp32: Encoder
            ) -> dict[str, Any]:
    papers = list(dataset.papers())
    ids = [p.id for p in papers]
    paper_vectors = batched.encode_documents([p.text for p in papers])
    names = list(dataset.queries)
    texts = [dataset.queries[q] for q in names]
    vectors = {"batched": batched.encode_queries(texts), "alone": alone.encode_queries(texts),
               "fp32": fp32.encode_queries(texts)}
    runs = {mode: ranked(v, paper_vectors, ids) for mode, v in vectors.items()}
    reports: Mapping[str, Report] = {
        mode: evaluate(dict(zip(names, run, strict=True)), dataset.qrels)
        for mode, run in runs.items()}
    pairs = list(zip(runs["batched"], runs["alone"], strict=True))
    top10_differs = sum(a[:10] != b[:10] for a, b in pairs)
    overlap = sum(len(set(a[:10]) & set(b[:10])) for a, b in pairs) / (10 * len(pairs))
    return {
        "queries": len(names), "papers": len(papers),
        "cosine batched vs alone": cosine_stats(vectors["batched"], vectors["alone"]),
        "cosine batched vs fp32": cosine_stats(vectors["batched"], vectors["fp32"]),
        "cosine alone vs fp32": cosine_stats(vectors["alone"], vectors["fp32"]),
        "share top 10 differs": round(top10_differs / len(names), 4),
        "mean top 10 overlap": round(overlap, 4),
        "dense ndcg@10": {m: round(r.ndcg_at_10, 4) for m, r in reports.items()},
        "alone against batched": paired(reports["batched"].per_query_ndcg_at_10,
                                        reports["alone"].per_query_ndcg_at_10).to_dict(),
    }


def texts_per_s(encoder: Encoder, texts: Sequence[str], mode: str) -> float:
    started = time.perf_counter()
    encoder.encode(texts, "query" if mode == "queries" else "document")
    return len(texts) / (time.perf_counter() - started)


def speed(batched: Encoder, alone: Encoder, queries: Sequence[str], papers: Sequence[str],
          rounds: int) -> dict[str, Any]:
    texts = {"queries": queries, "papers": papers}
    seen: dict[str, dict[str, list[float]]] = {k: {"batched": [], "alone": []} for k in texts}
    for _ in range(rounds):
        for kind, items in texts.items():
            for name, encoder in (("batched", batched), ("alone", alone)):
                seen[kind][name].append(texts_per_s(encoder, items, kind))
    return {kind: {"texts": len(texts[kind]),
                   "texts/s batched (median)": round(float(np.median(v["batched"])), 1),
                   "texts/s alone (median)": round(float(np.median(v["alone"])), 1),
                   "alone / batched per round": [round(a / b, 3) for a, b in
                                                 zip(v["alone"], v["batched"], strict=True)]}
            for kind, v in seen.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    models = settings.models
    path = model_dir(models.repository, models.embedder_name)
    options = Encoder.runtime_options(models)
    batched = Encoder(path, replace(options, precision="int8", int8_alone=False))
    alone = Encoder(path, replace(options, precision="int8", int8_alone=True))
    fp32 = Encoder(path, replace(options, precision="fp32"))
    if batched.precision != "int8":
        print("batch_independence: int8 failed its self-check on this CPU; nothing to measure",
              file=sys.stderr)
        return 2
    paths = [*settings.tune_sets, *settings.held_out_sets, settings.corpus_dir]
    sets: dict[str, Any] = {}
    all_queries: list[str] = []
    for dataset in (load_dataset(p) for p in paths):
        sets[dataset.name] = one_set(dataset, batched, alone, fp32)
        all_queries += list(dataset.queries.values())
        print(f"batch_independence: {dataset.name}: {sets[dataset.name]['dense ndcg@10']}",
              file=sys.stderr)
    abstracts = [p.text for p in read_corpus(settings.corpus_dir)][: args.papers]
    papers = {"texts": len(abstracts),
              "cosine batched vs alone": cosine_stats(batched.encode_documents(abstracts),
                                                      alone.encode_documents(abstracts))}
    print(json.dumps({
        "batch": options.batch_size, "intra_op_threads": options.intra_op_threads,
        "sets": sets, "sample papers": papers,
        "speed": speed(batched, alone, all_queries, abstracts, args.rounds),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

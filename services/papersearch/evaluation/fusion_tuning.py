"""``papersearch tune``: which hybrid fusion suits your judged queries.

Per dataset, the dense and BM25 lists (``index.prefetch_limit`` deep) are fetched once per query
from the dataset's own collection, and so is the configured hybrid search (the baseline), all
without query feedback (retriever/feedback.py): fusions are compared on one pass. Every
candidate then fuses those same lists in this process (index/fusion.py), so the table compares
fusions, not engines or runs. The configured hybrid search with query feedback (the
``index.prf_*`` settings) is fetched too and judged against the baseline on every set, so that
the table also says whether feedback, on by default, pays on these queries.

The choice is made on the tuning sets alone. Only candidates the Store can run count
(RRF with its k, the convex fusion with its dense weight; the others are shown for reference):
the one with the best mean nDCG@10 over the tuning sets, provided that it is no worse than the
baseline on any of them. The held-out sets then judge it: per-query wins, losses and a paired
permutation test against the baseline. Adopt it only if every held-out set improves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from tqdm import tqdm

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, corpus_counts, load_dataset
from papersearch.evaluation.harness import open_dataset_index
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import TIE, Paired, paired
from papersearch.index.fusion import Normalisation, Ranked, convex, rrf
from papersearch.retriever.retriever import Retriever
from papersearch.settings import IndexSettings, Settings

RRF_KS = (10, 30, 60, 100)
DENSE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
RESULTS = 100  # ranked ids per query: enough for Recall@100
# Judged queries a set needs before its mean gain says "adopt it" (or "every set gains"): one
# query did. The judged sets here have 30 (MED) to 225 (Cranfield).
MIN_JUDGED_QUERIES = 20


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    fuse: Callable[[Ranked, Ranked], list[tuple[str, float]]]
    settings: Mapping[str, Any] | None  # index settings that make the Store run it; None: none


@dataclass(frozen=True, slots=True)
class Lists:
    """One dataset's first-stage lists per query."""

    dense: Mapping[str, Ranked]
    sparse: Mapping[str, Ranked]
    baseline: Mapping[str, list[str]]  # the configured hybrid search
    feedback: Mapping[str, list[str]]  # the same with query feedback


@dataclass(frozen=True, slots=True)
class JudgedSets:
    """Every judged set with its first-stage lists, for the scripts that rescore one side of the
    configured convex hybrid (benchmarks/bm25_params.py, dense_truncation.py)."""

    settings: Settings  # as configured, query feedback off (its second pass is not varied)
    encoder: Encoder
    sets: Mapping[str, EvalDataset]  # tuning sets, then held-out sets, then the known-item set
    tuning: list[str]
    held_out: list[str]
    known_item: str
    lists: Mapping[str, Lists]


def judged_sets(settings: Settings) -> JudgedSets:
    """The tuning, held-out and known-item sets of ``settings``, each set's lists fetched once
    (ValueError where the configured fusion is not convex)."""
    if settings.index.fusion != "convex":
        raise ValueError("the configured fusion is not convex; set index.fusion=convex")
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})
    encoder = Encoder.from_settings(settings.models)
    tuning = [load_dataset(p) for p in settings.tune_sets]
    judging = [load_dataset(p) for p in [*settings.held_out_sets, settings.corpus_dir]]
    check_roles(tuning, judging)
    sets = {d.name: d for d in [*tuning, *judging]}
    return JudgedSets(settings, encoder, sets, [d.name for d in tuning],
                      [d.name for d in judging[:-1]], judging[-1].name,
                      {name: fetch_lists(d, settings, encoder) for name, d in sets.items()})


def check_roles(tuning: Sequence[EvalDataset], held_out: Sequence[EvalDataset]) -> None:
    """Each role has a set, and no set (named by its folder) has two places: results are kept
    by name, so a held-out set named like a tuning set would make the choice on its
    judgments."""
    if not tuning or not held_out:
        raise ValueError("tune needs at least one tuning set and one held-out set "
                         "(--tune / --held-out, or tune_sets / held_out_sets)")
    names = [d.name for d in [*tuning, *held_out]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"judged sets must have distinct folder names; {', '.join(twice)} "
                         "is given twice (a set cannot both choose and judge)")


def gains(judged: Mapping[str, Paired], among: Sequence[str],
          minimum: int = MIN_JUDGED_QUERIES) -> bool:
    """Whether every set of ``among`` gains on its mean: by more than round-off (a candidate
    whose differences cancel out exactly is not adopted on a 1e-17), on at least ``minimum``
    judged queries (one query's gain said "adopt it")."""
    return not too_few(judged, among, minimum) and all(
        judged[n].mean_difference > TIE for n in among)


def too_few(judged: Mapping[str, Paired], among: Sequence[str],
            minimum: int = MIN_JUDGED_QUERIES) -> dict[str, int]:
    """The sets of ``among`` with fewer than ``minimum`` judged queries: how many each has."""
    counted = {n: judged[n].wins + judged[n].losses + judged[n].ties for n in among}
    return {n: count for n, count in counted.items() if count < minimum}


def candidates(depth: int) -> list[Candidate]:
    """The fusions compared, over lists at most ``depth`` long."""
    def rrf_of(k: int, dense_weight: float) -> Callable[[Ranked, Ranked], list[tuple[str, float]]]:
        # Qdrant's rrf_k counts ranks from 0: k - 1 here, ranks from 1, is the same fusion.
        return lambda d, s: rrf([d, s], [2 * dense_weight, 2 * (1 - dense_weight)], k - 1)

    def convex_of(how: Normalisation, weight: float) -> Callable[
        [Ranked, Ranked], list[tuple[str, float]]
    ]:
        return lambda d, s: convex([d, s], [weight, 1 - weight], depth, how)

    found = [Candidate(f"rrf k={k}", rrf_of(k, 0.5), {"fusion": "rrf", "rrf_k": k})
             for k in RRF_KS]
    found += [Candidate(f"weighted rrf k=60 dense={w}", rrf_of(60, w), None)
              for w in DENSE_WEIGHTS if w != 0.5]
    for how in get_args(Normalisation):
        found += [
            Candidate(f"convex {how} dense={w}", convex_of(how, w),
                      {"fusion": "convex", "fusion_dense_weight": w} if how == "max" else None)
            for w in DENSE_WEIGHTS
        ]
    return found


def cosine_lists(query_ids: Sequence[str], queries: np.ndarray, paper_ids: Sequence[str],
                 papers: np.ndarray, depth: int) -> dict[str, Ranked]:
    """Per query (rows of ``queries``), the ``depth`` papers (rows of ``papers``) of highest
    cosine, exactly (every paper scored; unit vectors: the dot product), ties in paper order."""
    scores = queries @ papers.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return {q: [(paper_ids[i], float(scores[n, i])) for i in top[n]]
            for n, q in enumerate(query_ids)}


def convex_runs(parts: Mapping[str, Sequence[Ranked]], weights: Sequence[float], depth: int
                ) -> dict[str, list[str]]:
    """Per query, the ids of its lists (``parts``, each at most ``depth`` long) fused by the
    Store's convex fusion with ``weights``, the first ``RESULTS`` of them."""
    return {q: [i for i, _ in convex(list(lists), weights, depth)][:RESULTS]
            for q, lists in parts.items()}


def dense_and_hybrid(dataset: EvalDataset, lists: Lists, dense: Mapping[str, Ranked],
                     weight: float, depth: int) -> dict[str, Report]:
    """Reports of another dense list per query (``dense``: a candidate encoding's) alone and
    fused with the set's BM25 list as the Store fuses (convex, dense ``weight``)."""
    fused = convex_runs({q: (dense[q], lists.sparse[q]) for q in dense},
                        (weight, 1.0 - weight), depth)
    return {"dense": evaluate({q: [i for i, _ in r][:RESULTS] for q, r in dense.items()},
                              dataset.qrels),
            "hybrid": evaluate(fused, dataset.qrels)}


def fetch_lists(dataset: EvalDataset, settings: Settings, encoder: Encoder) -> Lists:
    store = open_dataset_index(dataset, settings, encoder)
    try:
        retriever = Retriever(store)
        depth = settings.index.prefetch_limit
        ids = list(dataset.queries)
        vectors = encoder.encode_queries([dataset.queries[q] for q in ids])
        dense: dict[str, Ranked] = {}
        sparse: dict[str, Ranked] = {}
        baseline: dict[str, list[str]] = {}
        feedback: dict[str, list[str]] = {}
        for qid, vector in tqdm(zip(ids, vectors, strict=True), total=len(ids),
                                desc=f"{dataset.name} lists", unit="query", disable=None):
            text = dataset.queries[qid]
            dense[qid] = _ranked(retriever.search(text, vector, mode="dense", limit=depth))
            sparse[qid] = _ranked(retriever.search(text, vector, mode="sparse", limit=depth))
            baseline[qid] = [h.paper.id for h in retriever.search(text, vector, limit=RESULTS,
                                                                  feedback=False)]
            feedback[qid] = [h.paper.id for h in retriever.search(text, vector, limit=RESULTS,
                                                                  feedback=True)]
        return Lists(dense, sparse, baseline, feedback)
    finally:
        store.close()


def tune_fusion(
    tuning: Sequence[EvalDataset], held_out: Sequence[EvalDataset], settings: Settings,
    encoder: Encoder,
) -> dict[str, Any]:
    """Every candidate on every set, the choice and its held-out verdict (JSON-ready)."""
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})  # fusions of one pass
    check_roles(tuning, held_out)
    sets = [*tuning, *held_out]
    names = [d.name for d in sets]
    tuning_names, held_names = names[: len(tuning)], names[len(tuning):]
    lists = {d.name: fetch_lists(d, settings, encoder) for d in sets}
    qrels = {d.name: d.qrels for d in sets}
    baseline = {name: evaluate(runs.baseline, qrels[name]) for name, runs in lists.items()}
    pool = candidates(settings.index.prefetch_limit)
    reports = {
        c.name: {
            name: evaluate({q: [i for i, _ in c.fuse(runs.dense[q], runs.sparse[q])][:RESULTS]
                            for q in runs.dense}, qrels[name])
            for name, runs in lists.items()
        }
        for c in pool
    }

    def row(by_set: Mapping[str, Report]) -> dict[str, Any]:
        return {"ndcg@10": {n: round(r.ndcg_at_10, 4) for n, r in by_set.items()},
                "recall@100": {n: round(r.recall_at_100, 4) for n, r in by_set.items()},
                "tuning_mean": round(_mean(by_set, tuning_names), 4),
                "held_out_mean": round(_mean(by_set, held_names), 4)}

    def against_baseline(by_set: Mapping[str, Report]) -> dict[str, Paired]:
        return {n: paired(baseline[n].per_query_ndcg_at_10, by_set[n].per_query_ndcg_at_10)
                for n in names}

    with_feedback = {name: evaluate(runs.feedback, qrels[name]) for name, runs in lists.items()}
    feedback_judged = against_baseline(with_feedback)
    chosen = choose(pool, reports, baseline, tuning_names)
    verdict = None
    if chosen is not None:
        judged = against_baseline(reports[chosen.name])
        verdict = {
            "name": chosen.name,
            "settings": {f"index.{k}": v for k, v in (chosen.settings or {}).items()},
            "against_baseline": {n: p.to_dict() for n, p in judged.items()},
            "adopt": gains(judged, held_names),
            "too_few_queries": too_few(judged, held_names),
        }
    return {
        "tuning_sets": tuning_names,
        "held_out_sets": held_names,
        "prefetch_limit": settings.index.prefetch_limit,
        "baseline": {"settings": _fusion_settings(settings.index), **row(baseline)},
        "feedback": {
            "settings": {f"index.{k}": v for k, v in settings.index.model_dump().items()
                         if k.startswith("prf_") and k != "prf_enabled"},
            **row(with_feedback),
            "against_baseline": {n: p.to_dict() for n, p in feedback_judged.items()},
            "tuning_sets_agree": gains(feedback_judged, tuning_names),
            "held_out_sets_agree": gains(feedback_judged, held_names),
            "too_few_queries": too_few(feedback_judged, names),
        },
        "candidates": sorted(
            ({"name": c.name, "runs_in_store": c.settings is not None, **row(reports[c.name])}
             for c in pool), key=lambda r: -float(r["tuning_mean"])),
        "chosen": verdict,
        "corpora": {d.name: corpus_counts(d) for d in sets},  # each read by fetch_lists
    }


def choose(pool: Sequence[Candidate], reports: Mapping[str, Mapping[str, Report]],
           baseline: Mapping[str, Report], tuning: Sequence[str]) -> Candidate | None:
    """The candidate the Store runs with the best mean nDCG@10 over the ``tuning`` sets, among
    those above the baseline's mean and no worse than it on any of them; None if there is
    none. (One that only ties it, the configured fusion itself, say, left the choice to the
    held-out sets.)"""
    floor = _mean(baseline, tuning) + TIE
    eligible = [
        c for c in pool
        if c.settings is not None and _mean(reports[c.name], tuning) > floor
        and all(reports[c.name][n].ndcg_at_10 >= baseline[n].ndcg_at_10 for n in tuning)
    ]
    return max(eligible, key=lambda c: _mean(reports[c.name], tuning), default=None)


def _mean(by_set: Mapping[str, Report], among: Sequence[str]) -> float:
    return sum(by_set[n].ndcg_at_10 for n in among) / len(among)


def _ranked(hits: Sequence[Any]) -> Ranked:
    return [(h.paper.id, h.score) for h in hits]


def _fusion_settings(index: IndexSettings) -> dict[str, Any]:
    if index.fusion == "rrf":
        return {"index.fusion": "rrf", "index.rrf_k": index.rrf_k}
    if index.fusion == "convex":
        return {"index.fusion": "convex", "index.fusion_dense_weight": index.fusion_dense_weight}
    return {"index.fusion": index.fusion}

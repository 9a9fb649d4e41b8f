"""Our nDCG@10, Recall@100 and MRR@10 (evaluation/metrics.py) against trec_eval's
(pytrec_eval), on real judgments: Cranfield's graded qrels and CACM's binary ones, with seeded
random runs over each set's judged and unjudged documents; and on a small synthetic set with the
zero and negative grades and the unscorable queries the real ones lack, where evaluate()'s means
differ from trec_eval's by its documented convention. Runs are given to trec_eval with strictly
decreasing scores, so its tie-break (by document id) never applies."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from statistics import fmean

import pytest
import pytrec_eval

from papersearch.evaluation.beir import load_qrels
from papersearch.evaluation.metrics import evaluate, mrr_at_k, ndcg_at_k, recall_at_k
from tests.conftest import SHARED

EVAL = SHARED / "eval"


def _trec_eval(qrels: Mapping[str, Mapping[str, int]], runs: Mapping[str, Sequence[str]]
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """trec_eval's ndcg_cut_10 and recall_100, and its recip_rank of the top 10, per query of
    ``runs`` (given strictly decreasing scores: no ties for it to break)."""
    as_scores = {q: {doc: float(len(docs) - i) for i, doc in enumerate(docs)}
                 for q, docs in runs.items()}
    top10 = {q: dict(list(scores.items())[:10]) for q, scores in as_scores.items()}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(
        as_scores)
    their_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return theirs, their_rr


def _runs(qrels: dict[str, dict[str, int]], seed: int) -> dict[str, list[str]]:
    """Per query 150 documents: its judged ones mixed with others' (unjudged for it)."""
    rng = random.Random(seed)
    pool = sorted({doc for judged in qrels.values() for doc in judged})
    runs = {}
    for query, judged in sorted(qrels.items()):
        docs = list(dict.fromkeys(list(judged) + rng.sample(pool, 150)))[:150]
        rng.shuffle(docs)
        runs[query] = docs
    return runs


@pytest.mark.parametrize("dataset", ["cranfield", "cacm"])
def test_metrics_agree_with_trec_eval(dataset: str) -> None:
    path = EVAL / dataset
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    qrels = load_qrels(path)
    runs = _runs(qrels, seed=7)
    theirs, their_rr = _trec_eval(qrels, runs)
    checked = 0
    for query, docs in runs.items():
        if not any(grade > 0 for grade in qrels[query].values()):
            continue  # none in these sets; evaluate() skips such a query, trec_eval scores it 0
        assert ndcg_at_k(docs, qrels[query]) == pytest.approx(theirs[query]["ndcg_cut_10"])
        assert recall_at_k(docs, qrels[query]) == pytest.approx(theirs[query]["recall_100"])
        assert mrr_at_k(docs, qrels[query]) == pytest.approx(their_rr[query]["recip_rank"])
        checked += 1
    assert checked >= 50


# Graded, zero and negative grades; ranks past 10 and past 100; unjudged documents between.
_FILLER = [f"u{i}" for i in range(120)]
SYNTHETIC_QRELS = {
    "graded": {"a": 3, "b": 2, "c": 1, "d": 2, "neg": -1, "zero": 0, "far": 1},
    "binary": {"x": 1, "y": 1, "bad": -2, "nil": 0},
    "late": {"p": 1, "q": 2},
    "all zero": {"a": 0, "b": 0},  # nothing relevant: trec_eval scores it 0, evaluate() skips it
    "all negative": {"x": -1},
    "unanswered": {"a": 1},  # judged, not in the run: evaluate() scores it 0, trec_eval drops it
}
SYNTHETIC_RUNS = {
    "graded": ["neg", "c", "u0", "a", "zero", "b", "u1", *_FILLER[2:110], "d", "far"],
    "binary": ["bad", "nil", "y", *_FILLER[:9], "x"],
    "late": [*_FILLER[:10], "q", "p"],
    "all zero": ["a", "b", "u0"],
    "all negative": ["x"],
    "extra": ["a"],  # run, never judged: both leave it out
}


def test_synthetic_grades_agree_with_trec_eval() -> None:
    """Per query, our metrics are trec_eval's, zero and negative grades included; a query
    whose judgments are all <= 0 scores 0 by both (evaluate() then skips it, below)."""
    theirs, their_rr = _trec_eval(SYNTHETIC_QRELS, SYNTHETIC_RUNS)
    assert theirs.keys() == {"graded", "binary", "late", "all zero", "all negative"}
    for query in theirs:
        docs, qrels = SYNTHETIC_RUNS[query], SYNTHETIC_QRELS[query]
        assert ndcg_at_k(docs, qrels) == pytest.approx(theirs[query]["ndcg_cut_10"])
        assert recall_at_k(docs, qrels) == pytest.approx(theirs[query]["recall_100"])
        assert mrr_at_k(docs, qrels) == pytest.approx(their_rr[query]["recip_rank"])
    # the case is not degenerate: graded gains, a recall cut at 100, an MRR cut at 10
    assert 0 < theirs["graded"]["ndcg_cut_10"] < 1 and theirs["graded"]["recall_100"] == 0.6
    assert their_rr["late"]["recip_rank"] == 0 and theirs["late"]["recall_100"] == 1
    assert theirs["all zero"]["ndcg_cut_10"] == theirs["all negative"]["ndcg_cut_10"] == 0


def test_evaluate_means_against_trec_eval() -> None:
    """evaluate()'s means are over the queries with a relevant judgment, an unanswered one
    scoring 0; trec_eval's over the queries of both run and qrels (docs of metrics.evaluate)."""
    theirs, their_rr = _trec_eval(SYNTHETIC_QRELS, SYNTHETIC_RUNS)
    report = evaluate(SYNTHETIC_RUNS, SYNTHETIC_QRELS)
    ours = ["graded", "binary", "late", "unanswered"]
    assert (report.queries, report.skipped_queries) == (4, 3)  # all zero, all negative, extra
    assert report.per_query_ndcg_at_10 == pytest.approx(
        {q: theirs[q]["ndcg_cut_10"] if q in theirs else 0.0 for q in ours})
    scored = [q for q in ours if q in theirs]
    assert report.ndcg_at_10 == pytest.approx(sum(theirs[q]["ndcg_cut_10"] for q in scored) / 4)
    assert report.recall_at_100 == pytest.approx(sum(theirs[q]["recall_100"] for q in scored) / 4)
    assert report.mrr_at_10 == pytest.approx(sum(their_rr[q]["recip_rank"] for q in scored) / 4)
    # trec_eval's own mean counts the all-zero and all-negative queries, not the unanswered one
    their_mean = fmean(scores["ndcg_cut_10"] for scores in theirs.values())
    assert their_mean == pytest.approx(report.ndcg_at_10 * 4 / 5)
    # where every judged query is answered and has a relevant judgment, the means are the same
    answered = {q: SYNTHETIC_QRELS[q] for q in scored}
    theirs_answered, _ = _trec_eval(answered, SYNTHETIC_RUNS)
    assert evaluate(SYNTHETIC_RUNS, answered).ndcg_at_10 == pytest.approx(
        fmean(scores["ndcg_cut_10"] for scores in theirs_answered.values()))

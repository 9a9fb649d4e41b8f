"""Our nDCG@10, Recall@100 and MRR@10 (evaluation/metrics.py) against trec_eval's
(pytrec_eval), on real judgments: Cranfield's graded qrels and CACM's binary ones, with seeded
random runs over each set's judged and unjudged documents."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from papersearch.evaluation.beir import load_qrels
from papersearch.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from tests.conftest import SHARED

EVAL = SHARED / "eval"


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
    # trec_eval ranks by score, ties broken by document id: strictly decreasing scores
    as_scores = {q: {doc: float(len(docs) - i) for i, doc in enumerate(docs)}
                 for q, docs in runs.items()}
    top10 = {q: dict(list(scores.items())[:10]) for q, scores in as_scores.items()}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(
        as_scores)
    their_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    checked = 0
    for query, docs in runs.items():
        if not any(grade > 0 for grade in qrels[query].values()):
            continue  # trec_eval skips queries without a relevant document; we score them 0
        assert ndcg_at_k(docs, qrels[query]) == pytest.approx(theirs[query]["ndcg_cut_10"])
        assert recall_at_k(docs, qrels[query]) == pytest.approx(theirs[query]["recall_100"])
        assert mrr_at_k(docs, qrels[query]) == pytest.approx(their_rr[query]["recip_rank"])
        checked += 1
    assert checked >= 50

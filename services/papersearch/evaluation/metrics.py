"""Ranking-quality metrics over graded relevance judgments (qrels): per query, nDCG@k (linear
gain), Recall@k and MRR@k equal trec_eval's ``ndcg_cut.k``, ``recall.k`` and ``recip_rank`` (of
the top k) for the same ranking, checked in tests/test_metrics_trec_eval.py; :func:`evaluate`'s
means differ from trec_eval's and BEIR's in which queries they count (see there).

A document is relevant when its judged score is above zero; zero, negative and unjudged
documents give no gain. A ranked list is deduplicated (first occurrence wins) before it is cut
at ``k``. Ties: a ranking is taken in the order given, scores are never seen here. The harness's
rankings order equal scores by the order ids were first met in (index/fusion.py); trec_eval
re-sorts by score and breaks ties by document id (descending), so where a run has tied scores
its figures can differ from ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import log2
from statistics import fmean
from typing import Any


@dataclass(frozen=True)
class Report:
    """Mean metrics over the evaluated queries, and nDCG@10 per query; ``ms_per_query``: what
    producing the run cost per query, where the caller measured it."""

    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int
    skipped_queries: int
    per_query_ndcg_at_10: Mapping[str, float]
    ms_per_query: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "ndcg@10": self.ndcg_at_10,
            "recall@100": self.recall_at_100,
            "mrr@10": self.mrr_at_10,
            "queries": self.queries,
            "skipped_queries": self.skipped_queries,
            "ms_per_query": self.ms_per_query,
            "per_query_ndcg@10": dict(self.per_query_ndcg_at_10),
        }


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """DCG of the top k (gain = score, discount log2(rank + 1)) over the ideal DCG, or 0."""
    gains = [max(qrels.get(doc, 0), 0) for doc in top_k(ranked, k)]
    ideal = _dcg(sorted(_relevant(qrels).values(), reverse=True)[:k])
    return _dcg(gains) / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    """Fraction of the relevant documents found in the top k; 0 if none is relevant."""
    retrieved = set(top_k(ranked, k))
    relevant = _relevant(qrels)
    return len(relevant.keys() & retrieved) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document in the top k, else 0."""
    for rank, doc in enumerate(top_k(ranked, k), start=1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def evaluate(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> Report:
    """Score a run (query id → ranked doc ids) against qrels (query id → doc id → score).

    The means are over the queries of ``qrels`` with a relevant (score > 0) judgment; one the
    run lacks scores 0 there. The others, of ``qrels`` (all judgments <= 0) or of the run only,
    are counted in ``skipped_queries`` (as `eval` says "without a relevant judgment"), not
    scored. Means over no queries are 0.

    trec_eval (pytrec_eval; BEIR's EvaluateRetrieval averages what it returns) scores the
    queries in both the run and the qrels instead: a query whose judgments are all <= 0 scores
    0 there (lowering its mean, not ours), and a judged query the run lacks is left out there
    (lowering our mean, not its). A run that answers every judged query, over qrels where each
    query has a relevant judgment (the four sets of shared/eval), gets the same means from both,
    ties apart (see the module's docstring).
    """
    judged = {query: judgments for query, judgments in qrels.items() if _relevant(judgments)}
    rankings = {query: run.get(query, ()) for query in judged}
    per_query = {query: ndcg_at_k(rankings[query], judged[query]) for query in judged}
    return Report(
        ndcg_at_10=_mean(per_query.values()),
        recall_at_100=_mean(recall_at_k(rankings[q], judged[q]) for q in judged),
        mrr_at_10=_mean(mrr_at_k(rankings[q], judged[q]) for q in judged),
        queries=len(judged),
        skipped_queries=len(qrels.keys() | run.keys()) - len(judged),
        per_query_ndcg_at_10=per_query,
    )


def top_k(ranked: Sequence[str], k: int) -> list[str]:
    """The first k distinct documents of a ranking; raises ValueError when k < 1."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return list(dict.fromkeys(ranked))[:k]


def _relevant(qrels: Mapping[str, int]) -> dict[str, int]:
    return {doc: score for doc, score in qrels.items() if score > 0}


def _dcg(gains: Sequence[int]) -> float:
    return sum(gain / log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def _mean(values: Iterable[float]) -> float:
    scores = list(values)
    return fmean(scores) if scores else 0.0

"""Tune the rerank fusion (weight, k) on a training-side dataset: score each query's window once,
then re-rank it for every grid point. Tune on CACM; MED stays held out for judging."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset
from papersearch.evaluation.harness import (
    FirstStage,
    first_stage,
    open_dataset_index,
    ranking,
    score_windows,
)
from papersearch.evaluation.metrics import evaluate
from papersearch.index.query import Mode
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
KS = (1.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class GridPoint:
    weight: float
    k: float
    ndcg_at_10: float


def tune_rerank(
    dataset: EvalDataset,
    settings: Settings,
    encoder: Encoder,
    reranker: Reranker,
    mode: Mode = "hybrid",
    weights: Sequence[float] = WEIGHTS,
    ks: Sequence[float] = KS,
) -> list[GridPoint]:
    """nDCG@10 for every (weight, k), best first; weight 0 is the first stage alone."""
    store = open_dataset_index(dataset, settings, encoder)
    try:
        candidates = first_stage(dataset, Retriever(store), encoder, mode)
    finally:
        store.close()
    windows = score_windows(dataset, candidates, reranker, settings.search.rerank_top_n)
    stage = FirstStage(mode, candidates, windows)
    grid = []
    for weight in weights:
        for k in ks:
            search = settings.search.model_copy(update={"rerank_weight": weight, "rerank_rrf_k": k})
            report = evaluate(ranking(stage, search), dataset.qrels)
            grid.append(GridPoint(weight, k, report.ndcg_at_10))
    return sorted(grid, key=lambda p: (-p.ndcg_at_10, p.weight, p.k))

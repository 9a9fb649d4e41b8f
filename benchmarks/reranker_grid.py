"""Rerank depth and fusion for the default reranker, chosen on the tuning sets only.

    python benchmarks/reranker_grid.py > docs/tune/reranker.json

Per judged set: the hybrid first stage (as `papersearch eval` runs it) and the reranker's
scores for each query's top MAX_DEPTH, scored once. Every (depth, weight, k) of the grid fuses
the scores of the top ``depth`` only (pipeline/search.py rerank_hits), so one scoring pass
serves all depths. The choice: the best mean nDCG@10 over the tuning sets (settings tune_sets).
The held-out sets (held_out_sets) only judge it: hybrid against hybrid + rerank per query
(wins, losses, paired permutation test), and the reranker's wall time per query at the chosen
depth (scored again at that depth, one query at a time as `papersearch eval` does).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.harness import (
    FirstStage,
    first_stage,
    open_dataset_index,
    ranking,
    score_windows,
)
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import paired
from papersearch.evaluation.tuning import KS, WEIGHTS
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings

DEPTHS = (20, 30, 40, 50)
MAX_DEPTH = max(DEPTHS)


@dataclass(frozen=True, slots=True)
class Choice:
    depth: int
    weight: float
    k: float


def scored(dataset: EvalDataset, settings: Settings, encoder: Encoder, reranker: Reranker) -> (
    FirstStage
):
    """The hybrid first stage with reranker scores for each query's top MAX_DEPTH."""
    store = open_dataset_index(dataset, settings, encoder)
    try:
        candidates = first_stage(dataset, Retriever(store), encoder, "hybrid")
    finally:
        store.close()
    return FirstStage("hybrid", candidates, score_windows(dataset, candidates, reranker,
                                                          MAX_DEPTH))


def fused(stage: FirstStage, dataset: EvalDataset, settings: Settings, choice: Choice) -> Report:
    assert stage.rerank_scores is not None
    windows = {q: s[: choice.depth] for q, s in stage.rerank_scores.items()}
    search = settings.search.model_copy(
        update={"rerank_top_n": choice.depth, "rerank_weight": choice.weight,
                "rerank_rrf_k": choice.k})
    return evaluate(ranking(FirstStage(stage.mode, stage.candidates, windows), search),
                    dataset.qrels)


def grid(stages: Mapping[str, tuple[EvalDataset, FirstStage]], settings: Settings) -> (
    list[dict[str, Any]]
):
    """Every grid point's nDCG@10 per tuning set and their mean, best first."""
    rows = []
    for depth, weight, k in itertools.product(DEPTHS, [w for w in WEIGHTS if w > 0], KS):
        choice = Choice(depth, weight, k)
        scores = {name: fused(stage, dataset, settings, choice).ndcg_at_10
                  for name, (dataset, stage) in stages.items()}
        rows.append({"depth": depth, "weight": weight, "k": k,
                     "mean": round(sum(scores.values()) / len(scores), 4),
                     **{name: round(s, 4) for name, s in scores.items()}})
    return sorted(rows, key=lambda r: (-r["mean"], r["depth"], r["weight"], r["k"]))


def judge(dataset: EvalDataset, stage: FirstStage, settings: Settings, choice: Choice,
          reranker: Reranker) -> dict[str, Any]:
    """Hybrid against hybrid + rerank at ``choice`` on one set, and the rerank time."""
    hybrid = evaluate(ranking(FirstStage(stage.mode, stage.candidates), settings.search),
                      dataset.qrels)
    reranked = fused(stage, dataset, settings, choice)
    started = time.perf_counter()
    score_windows(dataset, stage.candidates, reranker, choice.depth)
    ms = 1000 * (time.perf_counter() - started) / len(dataset.queries)
    return {
        "hybrid": round(hybrid.ndcg_at_10, 4),
        "hybrid+rerank": round(reranked.ndcg_at_10, 4),
        "paired": paired(hybrid.per_query_ndcg_at_10, reranked.per_query_ndcg_at_10).to_dict(),
        "rerank_ms_per_query": round(ms, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    reranker = Reranker.from_settings(settings.models)

    def stages(paths: list[Any]) -> dict[str, tuple[EvalDataset, FirstStage]]:
        datasets = [load_dataset(p) for p in paths]
        return {d.name: (d, scored(d, settings, encoder, reranker)) for d in datasets}

    tuning = stages(settings.tune_sets)
    rows = grid(tuning, settings)
    best = rows[0]
    choice = Choice(best["depth"], best["weight"], best["k"])
    first = {name: round(evaluate(ranking(FirstStage(s.mode, s.candidates), settings.search),
                                  d.qrels).ndcg_at_10, 4) for name, (d, s) in tuning.items()}
    held_out = {name: judge(d, s, settings, choice, reranker)
                for name, (d, s) in stages(settings.held_out_sets).items()}
    print(json.dumps({
        "reranker": str(reranker.version_dir), "precision": reranker.precision,
        "tuning_first_stage": first, "chosen": best, "held_out": held_out,
        "grid": rows,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

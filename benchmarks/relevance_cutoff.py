"""What a min_relevance cut-off buys (off-topic queries answered empty) and what it costs
(on-topic queries answered empty, relevant papers lost on judged sets).

    python benchmarks/relevance_cutoff.py > docs/relevance_cutoff_feedback.json
    PAPERSEARCH_INDEX__PRF_ENABLED=false python benchmarks/relevance_cutoff.py \
        > docs/relevance_cutoff.json      # the single pass, the default before query feedback

Every query runs once through the in-process pipeline (SearchPipeline over LocalBackend; no
Ray) in hybrid mode, top 10, without rerank, with query feedback as ``index.prf_enabled`` says
(on by default; one search at a time, so never shed) and without a cut-off; each threshold is
then applied to those hits with cut_below, the function the pipeline cuts with. The cut is on
a hit's dense cosine to the query.

- sample corpus: its known-item set (papers indexed by abstract, titles as queries; built in
  a temporary folder with the evaluation harness's ingest) asked the off-topic queries of
  benchmarks/data/off_topic_queries.txt and its own titles (on-topic): the share of each
  answered empty, and for the titles what the judged sets report too.
- judged sets (BEIR folders; their indexes are the evaluation harness's, cached under
  settings.eval_dir): per threshold nDCG@10 with the cut, the share of judged queries answered
  empty, and the share of the relevant papers in the uncut top 10 that the cut removes.

The recommended threshold is chosen on the tuning sets (settings.tune_sets), the known-item
titles and the off-topic queries alone: the highest at which no tuning or known-item query is
answered empty and at most ``MAX_REMOVED`` of a tuning set's relevant top-10 papers go. The
held-out sets (settings.held_out_sets) only report what it costs them.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, known_item, load_dataset
from papersearch.evaluation.harness import open_dataset_index
from papersearch.evaluation.metrics import evaluate
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.query import SearchHit, SearchQuery, cut_below
from papersearch.pipeline.search import SearchPipeline
from papersearch.settings import Settings

TOP_K = 10
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(13))  # 0.0 to 0.6
MAX_REMOVED = 0.01  # of a tuning set's relevant papers in the uncut top 10, at the choice
HERE = Path(__file__).parent
Hits = Mapping[str, tuple[SearchHit, ...]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--corpus", type=Path, help="default: settings.corpus_dir")
    parser.add_argument("--off-topic", type=Path, default=HERE / "data" / "off_topic_queries.txt")
    return parser.parse_args(argv)


def read_queries(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def run_queries(dataset: EvalDataset, queries: Mapping[str, str], settings: Settings,
                encoder: Encoder) -> Hits:
    """The uncut hybrid top 10 of each query, through the pipeline."""
    store = open_dataset_index(dataset, settings, encoder)
    pipeline = SearchPipeline(LocalBackend(encoder, store, None), settings.search)

    async def run() -> Hits:
        return {qid: (await pipeline.search(SearchQuery(text, TOP_K, "hybrid", rerank=False))).hits
                for qid, text in queries.items()}

    try:
        return asyncio.run(run())
    finally:
        store.close()


def best_cosine(ranked: Sequence[SearchHit]) -> float:
    """The highest dense cosine among a query's hits: the cut-off that answers it empty."""
    return max((h.stages.dense for h in ranked if h.stages.dense is not None), default=-1.0)


def quartiles(hits: Hits) -> dict[str, float]:
    """Min, quartiles and max of the queries' best cosines."""
    best = sorted(best_cosine(ranked) for ranked in hits.values())
    return {f"q{q}": round(best[round(q / 4 * (len(best) - 1))], 4) for q in range(5)}


def empty_share(hits: Hits, threshold: float) -> float:
    return sum(not cut_below(h, threshold)[0] for h in hits.values()) / len(hits)


def judged_cost(hits: Hits, qrels: Mapping[str, Mapping[str, int]], threshold: float
                ) -> dict[str, float]:
    """nDCG@10 with the cut, the share of queries answered empty, and the share of the relevant
    papers in the uncut top 10 that the cut removes (over all queries together)."""
    kept = {qid: [h.paper.id for h in cut_below(h, threshold)[0]] for qid, h in hits.items()}
    found = lost = 0
    for qid, ranked in hits.items():
        relevant = {doc for doc, grade in qrels.get(qid, {}).items() if grade > 0}
        uncut = {h.paper.id for h in ranked} & relevant
        found += len(uncut)
        lost += len(uncut - set(kept[qid]))
    return {
        "ndcg@10": round(evaluate(kept, qrels).ndcg_at_10, 4),
        "answered_empty": round(empty_share(hits, threshold), 4),
        "relevant_removed": round(lost / found, 4) if found else 0.0,
    }


def judged_queries(dataset: EvalDataset) -> dict[str, str]:
    """The queries evaluate() scores: those with a relevant paper."""
    return {qid: text for qid, text in dataset.queries.items()
            if any(grade > 0 for grade in dataset.qrels.get(qid, {}).values())}


def recommended(on_topic: Hits, known: EvalDataset, tuning: Sequence[tuple[EvalDataset, Hits]]
                ) -> float:
    """The highest threshold that answers no tuning or known-item query empty and removes at
    most MAX_REMOVED of a tuning set's relevant top-10 papers (0.0 if none past it does)."""
    sets = [(known, on_topic), *tuning]
    fitting = [t for t in THRESHOLDS if all(
        cost["answered_empty"] == 0 and cost["relevant_removed"] <= MAX_REMOVED
        for cost in (judged_cost(hits, dataset.qrels, t) for dataset, hits in sets))]
    return max(fitting, default=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    sample = known_item(args.corpus or settings.corpus_dir)
    off_topic = read_queries(args.off_topic)
    with tempfile.TemporaryDirectory(prefix="relevance-cutoff-") as scratch:
        private = settings.model_copy(update={"eval_dir": Path(scratch)})
        sample_hits = run_queries(
            sample, {**sample.queries, **{f"off-topic-{i}": q for i, q in enumerate(off_topic)}},
            private, encoder)
    on = {q: h for q, h in sample_hits.items() if q in sample.queries}
    off = {q: h for q, h in sample_hits.items() if q not in sample.queries}
    roles = {**{path: "tuning" for path in settings.tune_sets},
             **{path: "held_out" for path in settings.held_out_sets}}
    judged = {dataset.name: (roles[path], dataset,
                             run_queries(dataset, judged_queries(dataset), settings, encoder))
              for path, dataset in ((path, load_dataset(path)) for path in roles)}
    choice = recommended(on, sample, [(dataset, hits) for role, dataset, hits in judged.values()
                                      if role == "tuning"])
    report: dict[str, Any] = {
        "mode": "hybrid", "top_k": TOP_K, "rerank": False,
        "index": settings.index.model_dump(mode="json", exclude={"api_key", "data_dir", "url"}),
        "sample": {
            "corpus": sample.name, "off_topic_queries": len(off), "on_topic_queries": len(on),
            "best_cosine_quartiles": {"off_topic": quartiles(off), "on_topic": quartiles(on)},
            "off_topic_best_cosine": {off_topic[int(q.removeprefix("off-topic-"))]:
                                      round(best_cosine(h), 4) for q, h in off.items()},
            "by_threshold": [
                {"min_relevance": t, "off_topic_answered_empty": round(empty_share(off, t), 4),
                 "on_topic": judged_cost(on, sample.qrels, t)}
                for t in THRESHOLDS
            ],
        },
        "judged": {
            name: {"role": role, "queries": len(hits), "by_threshold": [
                {"min_relevance": t, **judged_cost(hits, dataset.qrels, t)} for t in THRESHOLDS]}
            for name, (role, dataset, hits) in judged.items()
        },
        "recommended": {
            "min_relevance": choice,
            "rule": "the highest threshold answering no tuning-set or known-item query empty, "
                    f"removing at most {MAX_REMOVED:.0%} of a tuning set's relevant top-10 "
                    "papers; held-out sets only judged",
            "off_topic_answered_empty": round(empty_share(off, choice), 4),
            "held_out": {name: judged_cost(hits, dataset.qrels, choice)
                         for name, (role, dataset, hits) in judged.items() if role == "held_out"},
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

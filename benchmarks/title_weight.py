"""Does saying the title more often in BM25's document text rank better? (issue 17)

    python benchmarks/title_weight.py > docs/tune/title_weight.json

``index.bm25_title_weight`` w repeats each paper's title w times in the text its BM25 vector is
computed from (index/sparse.document_text; queries and dense vectors unchanged), and the mean
length BM25 normalises by counts the repeats. For each weight, each judged set gets its own eval
collection (evaluation/harness.open_dataset_index: the name carries the weight), and its lists
are fetched as ``papersearch tune`` fetches them (evaluation/fusion_tuning.fetch_lists, feedback
off): the BM25 list, and the configured hybrid search (convex fusion, dense weight 0.6).

The choice is made on the tuning sets (settings tune_sets) alone: the weight with the best mean
hybrid nDCG@10 over them, among those no worse than weight 1 on any of them. The held-out sets
(held_out_sets) and the known-item set (corpus_dir: titles as queries, abstracts as documents)
then judge it against weight 1: per query wins, losses, ties and a paired permutation test,
sparse and hybrid. If no weight beats 1 on the tuning sets, the best of the others is judged all
the same, for the record, and marked as not chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, load_dataset
from papersearch.evaluation.fusion_tuning import fetch_lists
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import against, choose_on_tuning, tuning_mean
from papersearch.settings import Settings

WEIGHTS = (1, 2, 3, 4)
MODES = ("sparse", "hybrid")
RESULTS = 100


def run(dataset: EvalDataset, settings: Settings, encoder: Encoder, weight: int) -> (
    dict[str, Report]
):
    """Sparse and hybrid reports for one dataset with BM25 title weight ``weight``."""
    index = settings.index.model_copy(update={"bm25_title_weight": weight, "prf_enabled": False})
    lists = fetch_lists(dataset, settings.model_copy(update={"index": index}), encoder)
    sparse = {q: [i for i, _ in ranked][:RESULTS] for q, ranked in lists.sparse.items()}
    return {"sparse": evaluate(sparse, dataset.qrels),
            "hybrid": evaluate(lists.baseline, dataset.qrels)}


def ndcg(by_set: Mapping[str, Mapping[str, Report]], mode: str) -> dict[str, float]:
    return {n: round(r[mode].ndcg_at_10, 4) for n, r in by_set.items()}


def titled(dataset: EvalDataset) -> float:
    """Share of the dataset's papers with a title: the rest are the same at every weight."""
    papers = list(dataset.papers())
    return round(sum(1 for p in papers if p.title.strip()) / len(papers), 4)


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    tuning = [load_dataset(p) for p in settings.tune_sets]
    judging = [load_dataset(p) for p in [*settings.held_out_sets, settings.corpus_dir]]
    tuning_names = [d.name for d in tuning]
    held_names = [d.name for d in judging[:-1]]

    # weight -> set -> mode -> report; tuning sets at every weight
    reports = {w: {d.name: run(d, settings, encoder, w) for d in tuning} for w in WEIGHTS}
    choice = choose_on_tuning(reports, 1, tuning_names)
    chosen, judged = choice.chosen, choice.judged
    for w in (1, judged):
        reports[w].update({d.name: run(d, settings, encoder, w) for d in judging})

    versus = against(reports[1], reports[judged], [*tuning_names, *held_names, judging[-1].name],
                     MODES, ("weight_1", "chosen"))
    held_out_agree = all(versus[n]["hybrid"]["mean_difference"] > 0 for n in held_names)
    print(json.dumps({
        "fusion": settings.index.fusion,
        "fusion_dense_weight": settings.index.fusion_dense_weight,
        "tuning_sets": tuning_names, "held_out_sets": held_names,
        "known_item_set": judging[-1].name,
        "titled_share": {d.name: titled(d) for d in [*tuning, *judging]},
        "weights": [{"title_weight": w, "sparse ndcg@10": ndcg(reports[w], "sparse"),
                     "hybrid ndcg@10": ndcg(reports[w], "hybrid"),
                     "tuning_mean_hybrid": round(tuning_mean(reports[w], tuning_names), 4),
                     "eligible": w == 1 or w in choice.eligible} for w in WEIGHTS],
        "judged": {"title_weight": judged, "chosen_on_tuning_sets": chosen is not None,
                   "against_weight_1": versus, "held_out_agree": held_out_agree,
                   "adopt": chosen is not None and held_out_agree},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Would the dense encoder rank better reading fewer or more tokens? (issue 17)

    python benchmarks/dense_truncation.py > docs/tune/dense_truncation.json

The embedder's manifest cuts every text at 256 tokens (``models.embedder_max_length``, fixed at
export). MiniLM was trained on 128-token inputs and its graph takes up to 512, while MED's and
Cranfield's abstracts often run past 256. For each length in ``LENGTHS`` this script encodes
every judged set's papers and queries with the tokenizer cut there (the same ONNX graph and
precision), ranks each set's papers by exact cosine (every paper scored, no index), and fuses
that list with the BM25 list of the set's eval collection (evaluation/fusion_tuning.fetch_lists)
as the Store does (convex, the configured dense weight). Every length, 256 included, is scored
this same way, so the comparison is between lengths, not against the engine (the
``engine_hybrid`` row): when this was first run (docs/tune/dense_truncation.json), int8 still
encoded texts in batches, whose dynamic quantization moved a vector with its batch-mates, and
the engine's papers had been batched differently from this script's.

The choice is made on the tuning sets alone (settings tune_sets): the length with the best mean
hybrid nDCG@10 among those no worse than 256 on any of them. The held-out sets and the
known-item set judge it: per query wins, losses, ties and a paired permutation test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset
from papersearch.evaluation.fusion_tuning import cosine_lists, dense_and_hybrid, judged_sets
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import against, choose_on_tuning, tuning_mean
from papersearch.index.fusion import Ranked
from papersearch.models.manifest import model_dir, read_manifest
from papersearch.settings import Settings

LENGTHS = (128, 256, 384, 512)


def dense_lists(dataset: EvalDataset, encoder: Encoder, depth: int) -> tuple[
    dict[str, Ranked], float
]:
    """Per query, the ``depth`` papers of highest cosine; and the seconds spent encoding the
    papers."""
    papers = list(dataset.papers())
    started = time.perf_counter()
    documents = encoder.encode_documents([p.text for p in papers])
    spent = time.perf_counter() - started
    ids = list(dataset.queries)
    queries = encoder.encode_queries([dataset.queries[q] for q in ids])
    return cosine_lists(ids, queries, [p.id for p in papers], documents, depth), spent


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    settings = Settings()
    models = settings.models
    configured = read_manifest(model_dir(models.repository, models.embedder_name)).max_length
    if configured not in LENGTHS:
        print(f"dense_truncation: the embedder cuts at {configured}, not one of {LENGTHS}",
              file=sys.stderr)
        return 2
    try:
        judged_data = judged_sets(settings)
    except ValueError as error:
        print(f"dense_truncation: {error}", file=sys.stderr)
        return 2
    encoder, sets, lists = judged_data.encoder, judged_data.sets, judged_data.lists
    tuning_names, held_names = judged_data.tuning, judged_data.held_out
    depth = judged_data.settings.index.prefetch_limit
    weight = judged_data.settings.index.fusion_dense_weight

    by_length: dict[int, dict[str, dict[str, Report]]] = {}
    encode_s: dict[int, dict[str, float]] = {}
    try:
        for length in LENGTHS:
            encoder.tokenizer.enable_truncation(length, strategy="longest_first")
            by_length[length], encode_s[length] = {}, {}
            for name, dataset in sets.items():
                dense, spent = dense_lists(dataset, encoder, depth)
                by_length[length][name] = dense_and_hybrid(dataset, lists[name], dense, weight,
                                                           depth)
                encode_s[length][name] = round(spent, 1)
                print(f"dense_truncation: {name} at {length} tokens: hybrid nDCG@10 "
                      f"{by_length[length][name]['hybrid'].ndcg_at_10:.4f}", file=sys.stderr)
    finally:
        encoder.tokenizer.enable_truncation(configured, strategy="longest_first")

    choice = choose_on_tuning(by_length, configured, tuning_names)
    chosen, judged = choice.chosen, choice.judged
    versus = against(by_length[configured], by_length[judged], list(sets), ("dense", "hybrid"),
                     (str(configured), str(judged)))
    held_out_agree = all(versus[n]["hybrid"]["mean_difference"] > 0 for n in held_names)
    print(json.dumps({
        "configured_max_length": configured, "fusion_dense_weight": weight,
        "precision": encoder.precision, "tuning_sets": tuning_names, "held_out_sets": held_names,
        "known_item_set": judged_data.known_item,
        "engine_hybrid": {n: round(evaluate(lists[n].baseline, sets[n].qrels).ndcg_at_10, 4)
                          for n in sets},
        "lengths": [{"max_length": n,
                     "dense ndcg@10": {s: round(by_length[n][s]["dense"].ndcg_at_10, 4)
                                       for s in sets},
                     "hybrid ndcg@10": {s: round(by_length[n][s]["hybrid"].ndcg_at_10, 4)
                                        for s in sets},
                     "tuning_mean_hybrid": round(tuning_mean(by_length[n], tuning_names), 4),
                     "papers_encode_s": encode_s[n]} for n in LENGTHS],
        "judged": {"max_length": judged, "chosen_on_tuning_sets": chosen is not None,
                   "against_configured": versus, "held_out_agree": held_out_agree,
                   "adopt": chosen is not None and held_out_agree},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

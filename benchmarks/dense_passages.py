"""Would the dense side rank better scoring a paper by its best passage? (issue 17)

    python benchmarks/dense_passages.py > docs/tune/dense_passages.json

The embedder reads a paper whole, cut at 256 tokens; MiniLM was trained on 128-token inputs,
and reading 384 or 512 tokens gained nothing (benchmarks/dense_truncation.py). The usual answer
for long documents is to encode passages and score a paper by its best one ("MaxP"). Each
paper's text is cut into windows of ``WINDOW`` tokens (with its [CLS] and [SEP]) that start
every ``STRIDE`` tokens, each window encoded alone (its text: the characters its tokens cover).
Variants, each a per-query list of the papers of highest score (every paper scored, no index):

- ``whole``: the paper's own vector (cut at the configured length), as the index stores it;
- ``maxp``: the best window's cosine;
- ``max(whole, maxp)``: the better of the two.

Each is fused with the set's BM25 list from its eval collection (evaluation/fusion_tuning.
fetch_lists) as the Store fuses (convex, the configured dense weight; query feedback off, as
every such script). The choice is made on the tuning sets alone (settings tune_sets): the
variant with the best mean hybrid nDCG@10 among those no worse than ``whole`` on any of them;
the held-out sets and the known-item set judge it: per query wins, losses, ties and a paired
permutation test. Encoding time is reported beside quality: passages are more texts to encode
at ingest (and vectors to store), queries cost the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset
from papersearch.evaluation.fusion_tuning import dense_and_hybrid, judged_sets
from papersearch.evaluation.metrics import Report
from papersearch.evaluation.paired import against, choose_on_tuning, tuning_mean
from papersearch.index.fusion import Ranked
from papersearch.models.manifest import TOKENIZER_FILE
from papersearch.settings import Settings

WINDOW = 128  # tokens per passage, [CLS] and [SEP] included: what MiniLM was trained on
STRIDE = 64  # a new window every this many tokens: each token in two windows
VARIANTS = ("whole", "maxp", "max(whole, maxp)")


def passages(tokenizer: Tokenizer, text: str) -> list[str]:
    """``text`` cut into windows of WINDOW - 2 tokens starting every STRIDE tokens (the last
    one reaching the end); one window, the text itself, where it fits."""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    room = WINDOW - 2
    if len(offsets) <= room:
        return [text]
    starts = list(range(0, len(offsets) - room, STRIDE)) + [len(offsets) - room]
    return [text[offsets[s][0]:offsets[s + room - 1][1]] for s in starts]


def best_per_paper(scores: np.ndarray, owners: np.ndarray, papers: int) -> np.ndarray:
    """(queries, papers): each paper's highest score among its passages' (columns of
    ``scores``, ``owners`` naming each column's paper, in paper order)."""
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    best = np.maximum.reduceat(scores, starts, axis=1)
    assert best.shape[1] == papers
    return best


def top(query_ids: Sequence[str], scores: np.ndarray, paper_ids: Sequence[str],
        depth: int) -> dict[str, Ranked]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return {q: [(paper_ids[i], float(scores[n, i])) for i in order[n]]
            for n, q in enumerate(query_ids)}


def dense_variants(dataset: EvalDataset, encoder: Encoder, tokenizer: Tokenizer, depth: int
                   ) -> tuple[dict[str, dict[str, Ranked]], dict[str, float | int]]:
    """Each variant's dense lists, and the cost: papers and passages encoded, seconds each."""
    papers = list(dataset.papers())
    ids = list(dataset.queries)
    queries = encoder.encode_queries([dataset.queries[q] for q in ids])
    started = time.perf_counter()
    whole = encoder.encode_documents([p.text for p in papers])
    whole_s = time.perf_counter() - started
    texts: list[str] = []
    owners: list[int] = []
    for n, paper in enumerate(papers):
        cut = passages(tokenizer, paper.text)
        texts += cut
        owners += [n] * len(cut)
    started = time.perf_counter()
    windows = encoder.encode_documents(texts)
    windows_s = time.perf_counter() - started
    paper_ids = [p.id for p in papers]
    whole_scores = queries @ whole.T
    maxp = best_per_paper(queries @ windows.T, np.array(owners), len(papers))
    scores: Mapping[str, np.ndarray] = {
        "whole": whole_scores, "maxp": maxp,
        "max(whole, maxp)": np.maximum(whole_scores, maxp)}
    return ({v: top(ids, scores[v], paper_ids, depth) for v in VARIANTS},
            {"papers": len(papers), "passages": len(texts), "papers_encode_s": round(whole_s, 1),
             "passages_encode_s": round(windows_s, 1)})


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        judged_data = judged_sets(Settings())
    except ValueError as error:
        print(f"dense_passages: {error}", file=sys.stderr)
        return 2
    encoder, sets, lists = judged_data.encoder, judged_data.sets, judged_data.lists
    tuning_names, held_names = judged_data.tuning, judged_data.held_out
    depth = judged_data.settings.index.prefetch_limit
    weight = judged_data.settings.index.fusion_dense_weight
    tokenizer = Tokenizer.from_file(str(encoder.version_dir / TOKENIZER_FILE))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    by_variant: dict[str, dict[str, dict[str, Report]]] = {v: {} for v in VARIANTS}
    cost: dict[str, dict[str, float | int]] = {}
    for name, dataset in sets.items():
        dense, cost[name] = dense_variants(dataset, encoder, tokenizer, depth)
        for variant in VARIANTS:
            by_variant[variant][name] = dense_and_hybrid(dataset, lists[name], dense[variant],
                                                         weight, depth)
        print(f"dense_passages: {name}: " + ", ".join(
            f"{v} {by_variant[v][name]['hybrid'].ndcg_at_10:.4f}" for v in VARIANTS),
            file=sys.stderr)

    choice = choose_on_tuning(by_variant, "whole", tuning_names)
    chosen, judged = choice.chosen, choice.judged
    versus = against(by_variant["whole"], by_variant[judged], list(sets), ("dense", "hybrid"),
                     ("whole", judged))
    held_out_agree = all(versus[n]["hybrid"]["mean_difference"] > 0 for n in held_names)
    print(json.dumps({
        "window_tokens": WINDOW, "stride_tokens": STRIDE, "fusion_dense_weight": weight,
        "precision": encoder.precision, "tuning_sets": tuning_names, "held_out_sets": held_names,
        "known_item_set": judged_data.known_item, "cost": cost,
        "variants": [{"variant": v,
                      "dense ndcg@10": {s: round(by_variant[v][s]["dense"].ndcg_at_10, 4)
                                        for s in sets},
                      "hybrid ndcg@10": {s: round(by_variant[v][s]["hybrid"].ndcg_at_10, 4)
                                         for s in sets},
                      "tuning_mean_hybrid": round(tuning_mean(by_variant[v], tuning_names), 4)}
                     for v in VARIANTS],
        "judged": {"variant": judged, "chosen_on_tuning_sets": chosen is not None,
                   "against_whole": versus, "held_out_agree": held_out_agree,
                   "adopt": chosen is not None and held_out_agree},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

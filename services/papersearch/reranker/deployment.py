"""Reranker: the cross-encoder as an autoscaled Serve deployment; concurrent searches' pairs
are scored in one ONNX batch."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, settings: Settings) -> None:
        self.reranker = Reranker.from_settings(settings.models)
        self.score.set_max_batch_size(settings.serve.reranker_batch_size)
        self.score.set_batch_wait_timeout_s(settings.serve.reranker_batch_wait_s)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.004)
    async def score(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        pairs = [(query, passage) for query, passages in requests for passage in passages]
        scores = await asyncio.to_thread(self.reranker.score_pairs, pairs)
        bounds = np.cumsum([0] + [len(passages) for _, passages in requests])
        return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

"""Reranker: the cross-encoder as an autoscaled Serve deployment; concurrent searches' pairs
are scored in one ONNX batch."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings
from papersearch.telemetry import metrics


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, settings: Settings) -> None:
        self.reranker = Reranker.from_settings(settings.models)
        self._score_batch.set_max_batch_size(settings.serve.reranker_batch_size)
        self._score_batch.set_batch_wait_timeout_s(settings.serve.reranker_batch_wait_s)

    async def score(self, request: tuple[str, list[str]]) -> np.ndarray:
        """One search's (query, passages) per call; concurrent calls share one ONNX batch."""
        with metrics().inside("Reranker"):
            return await self._score_batch(request)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.004)
    async def _score_batch(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        pairs = [(query, passage) for query, passages in requests for passage in passages]
        metrics().batch("Reranker", len(pairs))
        scores = await asyncio.to_thread(self.reranker.score_pairs, pairs)
        bounds = np.cumsum([0] + [len(passages) for _, passages in requests])
        return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

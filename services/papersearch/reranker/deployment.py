"""Reranker: the cross-encoder as an autoscaled Serve deployment; concurrent searches' pairs
are scored in one ONNX batch.

The model comes from a RerankerLoader: a replica starts without one (none trained or exported
yet) and serves it from the first call after it appears, without a restart. With the rerank
stage off (the default) nothing is loaded until something calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
from ray import serve

from papersearch.autoscaling import UTILIZATION, BusyMeter
from papersearch.logs import configure_logging
from papersearch.models.manifest import ModelNotFound
from papersearch.reranker.loader import RerankerLoader
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_format)
        self.loader = RerankerLoader(settings.models)
        # serve.batch adds these setters to the method; its type hints do not show them
        self._score_batch.set_max_batch_size(  # type: ignore[attr-defined]
            settings.serve.reranker_batch_size)
        self._score_batch.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            settings.serve.reranker_batch_wait_s)
        if not settings.search.rerank_enabled:
            log.info("rerank stage off (search.rerank_enabled=false): no reranker loaded")
        else:
            with contextlib.suppress(ModelNotFound):  # the loader said so; the replica starts
                metrics().model_loaded("Reranker", self.loader.get())
        self.meter = BusyMeter()  # from now: the load's seconds are not idle serving time

    async def _model(self) -> Reranker:
        """The model, loaded if it (or a newer version) has appeared: in a thread, ~1 s, when
        a look is due (models.reload_poll_s); else ModelNotFound."""
        loaded = self.loader.reranker
        if loaded is not None and not self.loader.due():
            return loaded
        reranker = await asyncio.to_thread(self.loader.get)
        if reranker is not loaded:
            metrics().model_loaded("Reranker", reranker)
        return reranker

    async def score(self, request: tuple[str, list[str]]) -> np.ndarray:
        """One search's (query, passages) per call; concurrent calls share one ONNX batch."""
        with metrics().inside("Reranker"):
            await self._model()
            return await self._score_batch(request)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.004)
    async def _score_batch(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        pairs = [(query, passage) for query, passages in requests for passage in passages]
        metrics().batch("Reranker", len(pairs))
        reranker = await self._model()
        scores = await self.meter.in_thread(reranker.score_pairs, pairs)
        bounds = np.cumsum([0] + [len(passages) for _, passages in requests])
        return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve asks every few hundred ms: the autoscaling policy's input (a coroutine: on
        the loop with the meter's other callers, not in Serve's thread pool)."""
        reading = self.meter.read()
        metrics().busy("Reranker", reading.busy_s)
        return {UTILIZATION: reading.share}

"""Reranker: the cross-encoder as an autoscaled Serve deployment; concurrent searches' pairs
are scored in one ONNX batch.

The replica starts without a model too (none trained or exported yet): every call then fails
with ModelNotFound, which the search pipeline turns into first-stage results
(``reranked=false``), and the replica looks for the model again at most every
``models.reload_poll_s``, serving it from the first call after it appears. No restart needed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from ray import serve

from papersearch.logs import configure_logging
from papersearch.models.manifest import ModelNotFound
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_format)
        self.models = settings.models
        self.reranker: Reranker | None = None
        self._missing: ModelNotFound | None = None
        self._next_look = 0.0
        self._loading = asyncio.Lock()
        self._load()
        self._score_batch.set_max_batch_size(settings.serve.reranker_batch_size)
        self._score_batch.set_batch_wait_timeout_s(settings.serve.reranker_batch_wait_s)

    def _load(self) -> None:
        try:
            self.reranker = Reranker.from_settings(self.models)
        except ModelNotFound as error:
            if self._missing is None:  # said once, not at every look
                log.warning("no reranker model yet: searches return first-stage results "
                            "(reranked=false) until `papersearch models train-reranker` or "
                            "`models export --reranker SOURCE` makes one; looking again every "
                            f"{self.models.reload_poll_s:g} s", extra={"reason": str(error)})
            self._missing = error
            self._next_look = time.monotonic() + self.models.reload_poll_s
            return
        if self._missing is not None:
            log.info("reranker model found and loaded",
                     extra={"model": self.reranker.manifest.name,
                            "version": self.reranker.manifest.version})
        self._missing = None
        metrics().model_loaded("Reranker", self.reranker)

    async def _model(self) -> Reranker:
        if self.reranker is None and time.monotonic() >= self._next_look:
            async with self._loading:
                if self.reranker is None and time.monotonic() >= self._next_look:
                    await asyncio.to_thread(self._load)
        if self.reranker is None:
            raise ModelNotFound(str(self._missing))
        return self.reranker

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
        scores = await asyncio.to_thread(reranker.score_pairs, pairs)
        bounds = np.cumsum([0] + [len(passages) for _, passages in requests])
        return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

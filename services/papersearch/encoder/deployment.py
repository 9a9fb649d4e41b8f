"""QueryEncoder: the Encoder as an autoscaled Serve deployment with dynamic batching.

Batching is the gateway's Coalescer again, one ONNX call at a time: a call that finds the model
idle runs at once from its own coroutine (no batch task to wake: serve.batch cost 0.2-0.4 ms
per lone call here, benchmarks/hops.py), and calls arriving while a batch runs (from several
gateways, or one gateway's other call slots) make the next batch together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from ray import serve

from papersearch.autoscaling import UTILIZATION, BusyMeter
from papersearch.coalesce import Coalescer
from papersearch.encoder.runtime import Encoder
from papersearch.logs import configure_logging
from papersearch.settings import Settings
from papersearch.telemetry import metrics


@serve.deployment(name="QueryEncoder")
class QueryEncoderDeployment:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_format)  # the precision line shows
        self.encoder = Encoder.from_settings(settings.models)
        self.meter = BusyMeter()
        metrics().model_loaded("QueryEncoder", self.encoder)
        # Serve's max_ongoing_requests bounds the calls waiting here; the bound below is a backstop
        self._batches: Coalescer[list[str], np.ndarray] = Coalescer(
            "QueryEncoder", self._encode_batch, max_batch=settings.serve.encoder_batch_size,
            max_in_flight=1, max_pending=settings.serve.coalesce_max_pending)

    async def encode(self, texts: list[str]) -> np.ndarray:
        """The queries a gateway coalesced into one call."""
        with metrics().inside("QueryEncoder"):
            return await self._batches.submit(texts)

    async def _encode_batch(self, calls: list[list[str]]) -> list[np.ndarray]:
        texts = [text for call in calls for text in call]
        metrics().batch("QueryEncoder", len(texts))
        with self.meter.busy():
            vectors = await asyncio.to_thread(self.encoder.encode_queries, texts)
        return np.split(vectors, np.cumsum([len(call) for call in calls[:-1]]))

    async def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        with self.meter.busy():
            return await asyncio.to_thread(self.encoder.encode_documents, texts)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve asks every few hundred ms: the autoscaling policy's input."""
        reading = self.meter.read()
        metrics().busy("QueryEncoder", reading.busy_s)
        return {UTILIZATION: reading.share}

    def identity(self) -> tuple[int, str]:
        return self.encoder.dim, self.encoder.sha256

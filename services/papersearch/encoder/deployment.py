"""QueryEncoder: the Encoder as an autoscaled Serve deployment with dynamic batching."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from ray import serve

from papersearch.autoscaling import UTILIZATION, BusyMeter
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
        # serve.batch adds these setters to the method; its type hints do not show them
        self._encode_batch.set_max_batch_size(  # type: ignore[attr-defined]
            settings.serve.encoder_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            settings.serve.encoder_batch_wait_s)

    async def encode(self, texts: list[str]) -> np.ndarray:
        """The queries a gateway coalesced into one call; Serve gathers concurrent calls (from
        several gateways, or while a batch runs) into one ONNX batch."""
        with metrics().inside("QueryEncoder"):
            return await self._encode_batch(texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004)
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

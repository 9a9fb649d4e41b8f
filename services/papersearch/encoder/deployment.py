"""QueryEncoder: the Encoder as an autoscaled Serve deployment with dynamic batching.

Batching is the gateway's Coalescer again, one ONNX call at a time: a call that finds the model
idle runs at once from its own coroutine (no batch task to wake: serve.batch cost 0.2-0.4 ms
per lone call here, benchmarks/hops.py), and calls arriving while a batch runs (from several
gateways, or one gateway's other call slots) make the next batch together. Documents (an
upsert's, a migration's) are encoded one call at a time too, beside the queries' batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from ray import serve

from papersearch.autoscaling import UTILIZATION, BusyMeter
from papersearch.coalesce import Coalescer
from papersearch.encoder.runtime import Encoder
from papersearch.logs import configure_logging
from papersearch.models.manifest import ModelRef
from papersearch.settings import Settings
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

# Embedders a replica keeps loaded besides its configured one (a migration's two); one more
# unloads the least recently used. Each finished migration left its old model loaded in every
# replica until it restarted (an int8 MiniLM's weights, more for a larger model: README,
# Results, Figures behind the limits).
EXTRA_EMBEDDERS = 2


@serve.deployment(name="QueryEncoder")
class QueryEncoderDeployment:
    """Runs the configured embedder, and any other exported one a call names (``name@version``
    in the model repository, loaded on first use: an embedder migration's new model), each
    with its own batches; at most EXTRA_EMBEDDERS such others at a time."""

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_format)  # the precision line shows
        self.settings = settings
        default = Encoder.from_settings(settings.models)
        self.default = str(ModelRef(default.manifest.name, default.manifest.version))
        self._encoders: OrderedDict[str, Encoder] = OrderedDict({self.default: default})
        self._batches: dict[str, Coalescer[list[str], np.ndarray]] = {}
        self._loads: dict[str, asyncio.Future[None]] = {}  # an embedder being loaded
        # one document batch at a time, whatever the embedder: each had run at once on a
        # thread of its own (concurrent upsert streams, a migration's copy), six ONNX runs on
        # a replica that reserves one CPU, and queries waited behind them all
        self._documents = asyncio.Semaphore(1)
        metrics().model_loaded("QueryEncoder", default)
        self.meter = BusyMeter()  # from now: the load's seconds are not idle serving time

    async def encode(self, texts: list[str], embedder: str | None = None) -> np.ndarray:
        """The queries a gateway coalesced into one call."""
        with metrics().inside("QueryEncoder"):
            return await (await self._coalescer(embedder)).submit(texts)

    async def encode_documents(self, texts: Sequence[str], embedder: str | None = None
                               ) -> np.ndarray:
        with metrics().inside("QueryEncoder"):
            encoder = await self._encoder(embedder)
            async with self._documents:
                return await self.meter.in_thread(encoder.encode_documents, texts)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve asks every few hundred ms: the autoscaling policy's input (a coroutine: on
        the loop with the meter's other callers, not in Serve's thread pool)."""
        reading = self.meter.read()
        metrics().busy("QueryEncoder", reading.busy_s)
        return {UTILIZATION: reading.share}

    async def identity(self, embedder: str | None = None) -> tuple[int, str]:
        encoder = await self._encoder(embedder)
        return encoder.dim, encoder.sha256

    async def _encoder(self, embedder: str | None) -> Encoder:
        """The encoder ``embedder`` names, loaded on first use. Concurrent first calls share
        one load, and a caller cancelled meanwhile (its deadline) leaves it running for the
        others and the next: the load was lost with it and began again for the next call."""
        key = embedder or self.default
        while key not in self._encoders:  # again if others' loads unloaded it meanwhile
            load = self._loads.get(key)
            if load is None:
                load = self._loads[key] = asyncio.ensure_future(self._load(key))
                load.add_done_callback(lambda done: self._loaded(key, done))
            await asyncio.shield(load)
        self._encoders.move_to_end(key)
        return self._encoders[key]

    async def _load(self, key: str) -> None:
        models = self.settings.models
        path = ModelRef.parse(key, models.repository).path(models.repository)
        self._encoders[key] = await asyncio.to_thread(Encoder, path,
                                                      Encoder.runtime_options(models))
        metrics().model_loaded("QueryEncoder", self._encoders[key])
        others = [k for k in self._encoders if k != self.default]  # least recently used first
        for unused in others[: max(0, len(others) - EXTRA_EMBEDDERS)]:
            # calls running on it keep it until they end; the next one loads it again
            name = self._encoders.pop(unused).manifest.name
            self._batches.pop(unused, None)
            if all(e.manifest.name != name for e in self._encoders.values()):
                metrics().model_unloaded("QueryEncoder", name)
            log.info("embedder unloaded", extra={"embedder": unused, "loaded": key})

    def _loaded(self, key: str, load: asyncio.Future[None]) -> None:
        """A finished load: the next call after a failed one tries again."""
        del self._loads[key]
        if not load.cancelled():
            load.exception()  # retrieved: its callers (if any still wait) were told

    async def _coalescer(self, embedder: str | None) -> Coalescer[list[str], np.ndarray]:
        key = embedder or self.default
        encoder = await self._encoder(key)  # loaded, and the most recently used
        if key not in self._batches:
            serve = self.settings.serve

            async def run(calls: list[list[str]]) -> list[np.ndarray]:
                texts = [text for call in calls for text in call]
                metrics().batch("QueryEncoder", len(texts))
                vectors = await self.meter.in_thread(encoder.encode_queries, texts)
                return np.split(vectors, np.cumsum([len(call) for call in calls[:-1]]))

            # Serve's max_ongoing_requests bounds the calls waiting; this bound is a backstop.
            # The first made while the embedder loaded is kept: one batch at a time per replica.
            return self._batches.setdefault(key, Coalescer(
                "QueryEncoder", run, max_batch=serve.encoder_batch_size, max_in_flight=1,
                max_pending=serve.coalesce_max_pending))
        return self._batches[key]

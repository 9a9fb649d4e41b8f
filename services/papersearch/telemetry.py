"""Prometheus metrics of the gateway and the deployments, through Ray's metrics API.

Every Ray node exports them, with Ray Serve's own ``ray_serve_*`` metrics, on its metrics export
port (``serve.metrics_port``, 8080 by default; KubeRay's default too) at ``/metrics``. Ray prefixes
the names below with ``ray_``. Outside a Ray worker (in-process gateway, tests) recording is a
no-op, so the same code runs everywhere.

- ``papersearch_requests_total{method,code}``: gRPC requests by method and status code;
- ``papersearch_request_latency_ms{method,code}``: their latency (histogram);
- ``papersearch_searches_total{reranked,rerank_depth,feedback}``: Search results with reranked
  true/false, whose ratio is the share of searches the reranker served, the rerank window
  each used (pipeline/rerank_depth.py; 0: not reranked), and whether query feedback ran (each
  such search does the index work twice; retriever/feedback.py);
- ``papersearch_batch_size{deployment}``: items per dynamic batch (queries or rerank pairs);
- ``papersearch_busy_seconds_total{deployment}``: wall time a model replica spent computing;
  its rate is the utilisation the autoscaling policy acts on (papersearch.autoscaling);
- ``papersearch_in_flight{deployment}``: requests inside a replica, waiting for or in a batch
  (its queue depth), per replica;
- ``papersearch_model_precision{deployment,model,precision}``: 1 for the precision a replica's
  model actually runs (int8 falls back to fp32 where its self-check fails on that CPU);
- ``papersearch_int8_agreement{deployment,model}``: that self-check's agreement with fp32;
- ``papersearch_refused_total{limit}``: calls refused at once (RESOURCE_EXHAUSTED, HTTP 429
  or 413) or watches ended, by the bound they met: the setting (``serve.max_index_queue``,
  ``serve.coalesce_max_pending``, ``serve.max_index_calls``, ``serve.watch_max_watches``,
  ``serve.watch_queue``, ``serve.health_max_watches``, ``serve.max_receive_bytes``), Serve's
  ``max_queued_requests`` or the HTTP front's ``http_parse_queue``; which to raise, or where
  to add replicas;
- ``papersearch_reads_retried_total{deployment}``: gateway reads sent a second time because no
  replica answered the first (one died mid-call, or none was running);
- ``papersearch_mirror_failed_total``: papers whose mirror write failed during an embedder
  migration (pipeline/migration.py: copied again before the swap or a rollback);
- ``papersearch_ready{check}``: 1 while the gateway is ready (``readiness``) and draining
  (``draining``), per gateway.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, get_args

from ray.util.metrics import Counter, Gauge, Histogram

from papersearch.settings import Precision

if TYPE_CHECKING:
    from papersearch.models.runtime import OnnxModel

log = logging.getLogger(__name__)

# to serve.index_call_timeout_s's default (an UpsertPapers stream may run 600 s); a watch,
# open for hours, lands past the last
LATENCY_MS_BOUNDS: list[float] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 120000,
    300000, 600000,
]
# a QueryEncoder replica batches up to encoder_batch_size gateway calls of up to
# coalesce_max_batch queries each: 32 x 32 by default
BATCH_SIZE_BOUNDS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
# Counters are summed here and handed to Ray this often: a Ray metric record costs tens of
# microseconds, a tenth of the gateway's CPU per search when every request made two. Ray
# exports every few seconds anyway; what a process had not handed over when it exits is lost.
COUNTER_FLUSH_S = 1.0


class Metrics:
    """The project's metrics; one instance per process (``metrics()``)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "papersearch_requests", description="gRPC requests by method and status code.",
            tag_keys=("method", "code"),
        )
        self.latency = Histogram(
            "papersearch_request_latency_ms", description="gRPC request latency (ms).",
            boundaries=LATENCY_MS_BOUNDS, tag_keys=("method", "code"),
        )
        self.http_requests = Counter(
            "papersearch_http_requests",
            description="HTTP/JSON API calls by method and HTTP status (each that reached "
                        "the gateway's gRPC server also counts in papersearch_requests; the "
                        "front's own refusals, 400-415 and 429, do not).",
            tag_keys=("method", "status"),
        )
        self.http_latency = Histogram(
            "papersearch_http_request_latency_ms", description="HTTP/JSON API latency (ms).",
            boundaries=LATENCY_MS_BOUNDS, tag_keys=("method", "status"),
        )
        self.searches = Counter(
            "papersearch_searches",
            description="Search responses by whether they were reranked, at what depth, and "
                        "whether query feedback ran.",
            tag_keys=("reranked", "rerank_depth", "feedback"),
        )
        self.batch_size = Histogram(
            "papersearch_batch_size", description="Items per dynamic batch.",
            boundaries=BATCH_SIZE_BOUNDS, tag_keys=("deployment",),
        )
        self.busy_seconds = Counter(
            "papersearch_busy_seconds", description="Wall time a replica spent computing (s).",
            tag_keys=("deployment",),
        )
        self.in_flight = Gauge(
            "papersearch_in_flight", description="Requests inside a replica (queued or running).",
            tag_keys=("deployment",),
        )
        self.precision = Gauge(
            "papersearch_model_precision",
            description="1 for the precision a replica's model runs (int8 or its fp32 fallback).",
            tag_keys=("deployment", "model", "precision"),
        )
        self.int8_agreement = Gauge(
            "papersearch_int8_agreement",
            description="The int8 self-check's agreement with fp32 on this replica's CPU.",
            tag_keys=("deployment", "model"),
        )
        self.reads_retried = Counter(
            "papersearch_reads_retried",
            description="Gateway reads sent again after no replica answered the first try.",
            tag_keys=("deployment",),
        )
        self.refusals = Counter(
            "papersearch_refused",
            description="Calls refused at once (or watches ended) by the bound they met.",
            tag_keys=("limit",),
        )
        self.mirror_failures = Counter(
            "papersearch_mirror_failed",
            description="Papers whose mirror write failed during an embedder migration.",
        )
        self.ready = Gauge(
            "papersearch_ready", description="1 while the gateway is ready / draining.",
            tag_keys=("check",),
        )
        self._in_flight: dict[str, int] = {}
        self._counts: dict[tuple[Counter, tuple[tuple[str, str], ...]], float] = {}
        self._counts_lock = threading.Lock()
        self._flusher: threading.Thread | None = None

    def _count(self, counter: Counter, value: float, tags: dict[str, str]) -> None:
        if not value > 0:  # Ray refuses an increment of 0 (or NaN): it stopped the flusher
            return
        key = (counter, tuple(tags.items()))
        with self._counts_lock:
            self._counts[key] = self._counts.get(key, 0.0) + value
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever,
                                                 name="metrics-flush", daemon=True)
                self._flusher.start()
                atexit.register(self.flush)

    def flush(self) -> None:
        """Hand the summed counter increments to Ray."""
        with self._counts_lock:
            counts, self._counts = self._counts, {}
        for (counter, tags), value in counts.items():
            try:
                counter.inc(value, tags=dict(tags))
            except Exception:  # one series Ray refuses must not drop the others
                log.exception("metric increment refused", extra={"tags": dict(tags)})

    def _flush_forever(self) -> None:
        while True:  # the thread outlives any one failed flush: it alone hands counts over
            time.sleep(COUNTER_FLUSH_S)
            try:
                self.flush()
            except Exception:
                log.exception("metrics flush failed")

    def request(self, method: str, code: str, latency_s: float) -> None:
        tags = {"method": method, "code": code}
        self._count(self.requests, 1.0, tags)
        self.latency.observe(latency_s * 1000.0, tags=tags)

    def http_request(self, method: str, status: int, latency_s: float) -> None:
        tags = {"method": method, "status": str(status)}
        self._count(self.http_requests, 1.0, tags)
        self.http_latency.observe(latency_s * 1000.0, tags=tags)

    def search(self, reranked: bool, rerank_window: int, feedback: bool) -> None:
        self._count(self.searches, 1.0, {"reranked": "true" if reranked else "false",
                                         "rerank_depth": str(rerank_window),
                                         "feedback": "true" if feedback else "false"})

    def read_retried(self, deployment: str) -> None:
        self._count(self.reads_retried, 1.0, {"deployment": deployment})

    def refused(self, limit: str) -> None:
        """``limit``: a fixed name (the setting), never anything a caller sent."""
        self._count(self.refusals, 1.0, {"limit": limit})

    def mirror_failed(self, papers: int) -> None:
        self._count(self.mirror_failures, float(papers), {})

    def gateway_state(self, ready: bool, draining: bool) -> None:
        self.ready.set(float(ready), tags={"check": "readiness"})
        self.ready.set(float(draining), tags={"check": "draining"})

    def busy(self, deployment: str, seconds: float) -> None:
        if seconds > 0:
            self._count(self.busy_seconds, seconds, {"deployment": deployment})

    def batch(self, deployment: str, size: int) -> None:
        self.batch_size.observe(float(size), tags={"deployment": deployment})

    def model_loaded(self, deployment: str, model: OnnxModel) -> None:
        name = model.manifest.name
        self._running(deployment, name, model.precision)
        if model.int8_agreement is not None:
            self.int8_agreement.set(model.int8_agreement,
                                    tags={"deployment": deployment, "model": name})

    def model_unloaded(self, deployment: str, name: str) -> None:
        """No precision of model ``name`` runs in this replica any more."""
        self._running(deployment, name, None)

    def _running(self, deployment: str, name: str, precision: str | None) -> None:
        """The precision gauge of model ``name``: 1 for the precision it runs at, else 0."""
        for each in get_args(Precision):
            self.precision.set(float(each == precision), tags={
                "deployment": deployment, "model": name, "precision": each})

    @contextmanager
    def inside(self, deployment: str) -> Iterator[None]:
        """Count a request as in flight in this replica while the block runs."""
        self._set_in_flight(deployment, +1)
        try:
            yield
        finally:
            self._set_in_flight(deployment, -1)

    def _set_in_flight(self, deployment: str, delta: int) -> None:
        value = self._in_flight.get(deployment, 0) + delta
        self._in_flight[deployment] = value
        self.in_flight.set(float(value), tags={"deployment": deployment})


@functools.cache
def metrics() -> Metrics:
    return Metrics()

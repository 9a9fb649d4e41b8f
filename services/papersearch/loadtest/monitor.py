"""What the server side says during a run: replica counts from Serve's status REST API (polled)
and Prometheus counters from Ray's metrics export (read at the start and the end)."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SERVE_STATUS_PATH = "/api/serve/applications/"
METRIC_PREFIX = "ray_papersearch_"
# Labels Ray adds to every exported metric (and Serve's per-replica tags): summed over.
RAY_LABELS = frozenset({"WorkerId", "Component", "NodeAddress", "SessionName", "Version",
                        "JobId", "replica", "route", "instance", "job"})
RAY_LABEL_PREFIXES = ("otel_scope_",)
HTTP_TIMEOUT_S = 2.0


# --- replicas (Serve's ServeInstanceDetails: ray/serve/schema.py) ---------------------------


@dataclass(frozen=True, slots=True)
class DeploymentState:
    running: int  # replicas in state RUNNING
    target: int | None  # the autoscaler's target_num_replicas
    status: str  # HEALTHY, UPSCALING, DOWNSCALING, UPDATING, ...


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    t_s: float  # seconds from the run's start
    deployments: dict[str, DeploymentState]  # empty when the API could not be read
    error: str | None = None


def deployment_states(payload: Mapping[str, Any], app: str) -> dict[str, DeploymentState]:
    """Per deployment of ``app``: RUNNING replicas, target and status, from the JSON of
    GET /api/serve/applications/. Raises LookupError when the application is not there."""
    applications = payload.get("applications") or {}
    if app not in applications:
        known = ", ".join(sorted(applications)) or "none"
        raise LookupError(f"no Serve application {app!r} (running: {known})")
    return {
        name: DeploymentState(
            running=sum(1 for r in details.get("replicas") or [] if r.get("state") == "RUNNING"),
            target=details.get("target_num_replicas"),
            status=str(details.get("status", "UNKNOWN")),
        )
        for name, details in (applications[app].get("deployments") or {}).items()
    }


def fetch(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> str:
    """GET a URL's body as text; errors as OSError with a short reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode("utf-8")
    except urllib.error.URLError as error:  # also HTTPError
        reason = error.reason if isinstance(error.reason, str) else repr(error.reason)
        raise OSError(f"{url}: {reason}") from None
    except (OSError, ValueError) as error:
        raise OSError(f"{url}: {error!r}") from None


class ReplicaMonitor:
    """Samples replica counts every ``sample_s`` until cancelled; failures become samples with
    an error (replicas unknown), never exceptions."""

    def __init__(self, status_url: str, app: str, sample_s: float,
                 clock: Callable[[], float]) -> None:
        self.url = status_url.rstrip("/") + SERVE_STATUS_PATH
        self.app = app
        self.sample_s = sample_s
        self.clock = clock
        self.samples: list[ReplicaSample] = []

    async def run(self) -> None:
        tick = 0
        while True:
            self.samples.append(await self.sample())
            # the next tick not yet passed: ticks a slow poll overran are skipped, not caught
            # up back to back (a slow dashboard is a loaded one)
            tick = max(tick + 1, math.floor(self.clock() / self.sample_s) + 1)
            await asyncio.sleep(max(0.0, tick * self.sample_s - self.clock()))

    async def sample(self) -> ReplicaSample:
        t_s = self.clock()
        try:
            payload = json.loads(await asyncio.to_thread(fetch, self.url))
            return ReplicaSample(t_s, deployment_states(payload, self.app))
        except (OSError, ValueError, LookupError, AttributeError, TypeError) as error:
            return ReplicaSample(t_s, {}, str(error))  # a payload of another shape too


# --- Prometheus metrics ---------------------------------------------------------------------


MetricKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, our labels (sorted)


Series = tuple[MetricKey, tuple[tuple[str, str], ...]]  # and Ray's labels (the process's)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    series: dict[Series, float]  # each process's own
    gauges: frozenset[MetricKey]

    @property
    def values(self) -> dict[MetricKey, float]:
        """Summed over Ray's bookkeeping labels (processes, replicas)."""
        summed: dict[MetricKey, float] = {}
        for (key, _), value in self.series.items():
            summed[key] = summed.get(key, 0.0) + value
        return summed


def parse_metrics(text: str, prefix: str = METRIC_PREFIX) -> MetricsSnapshot:
    """Samples whose name starts with ``prefix`` (but no ``_created`` timestamps), each
    process's series apart."""
    series: dict[Series, float] = {}
    gauges: set[MetricKey] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix) or sample.name.endswith("_created"):
                continue
            ours: list[tuple[str, str]] = []
            ray: list[tuple[str, str]] = []
            for label in sorted(sample.labels.items()):
                bookkeeping = label[0] in RAY_LABELS or label[0].startswith(RAY_LABEL_PREFIXES)
                (ray if bookkeeping else ours).append(label)
            key = (sample.name, tuple(ours))
            series[(key, tuple(ray))] = series.get((key, tuple(ray)), 0.0) + sample.value
            if family.type == "gauge":
                gauges.add(key)
    return MetricsSnapshot(series, frozenset(gauges))


def metric_deltas(start: MetricsSnapshot, end: MetricsSnapshot) -> dict[MetricKey, float]:
    """Counters and histograms: end - start per process's series, summed (a series new at the
    end counts from 0; one gone by the end, a replica stopped meanwhile, adds nothing rather
    than its whole count taken off); gauges: their value at the end."""
    deltas: dict[MetricKey, float] = {}
    for (key, ray), value in end.series.items():
        change = value if key in end.gauges else value - start.series.get((key, ray), 0.0)
        deltas[key] = deltas.get(key, 0.0) + change
    return deltas


def metric_name(key: MetricKey) -> str:
    """Prometheus notation: ``name{a="x",b="y"}``."""
    name, labels = key
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}" if labels else name


def read_metrics(url: str) -> MetricsSnapshot:
    """Scrape a /metrics endpoint; raises OSError when unreachable."""
    try:
        return parse_metrics(fetch(url))
    except ValueError as error:  # not Prometheus text
        raise OSError(f"{url}: {error}") from None

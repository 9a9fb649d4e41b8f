"""Hostile requests for every method through a real gRPC channel against the real gateway (over
the in-process backend and a real embedded index): never INTERNAL/UNKNOWN, still SERVING,
nothing written (tests/fuzzing.py; benchmarks/fuzz.py runs the same at scale)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from papersearch.client import SearchClient
from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.query import SearchQuery
from papersearch.settings import Settings
from tests.fuzzing import KEPT, KINDS, METHODS, fuzz
from tests.gateway_helpers import scratch_gateways

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def gateway(sample_settings: Settings, embedder_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    data_dir = tmp_path_factory.mktemp("fuzz-index")
    with scratch_gateways(sample_settings, Encoder(embedder_dir), data_dir, KEPT) as (
            servers, backend, store):
        yield servers.start(backend), store


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_requests_get_no_internal_or_unknown(gateway: tuple[str, Any], seed: int) -> None:
    target, store = gateway
    before = store.count()
    report = fuzz(target, seed=seed, count=400)
    assert report.sent == 400
    assert set(report.by_method) == set(METHODS)
    assert report.bad == [], report.bad[:5]
    assert report.codes.get("INVALID_ARGUMENT", 0) > 100  # the hostile inputs were refused
    with SearchClient(target, timeout_s=60) as client:
        assert client.health() == "SERVING"
        hits = client.search(SearchQuery("graph neural networks", rerank=False)).hits
        assert {h.paper.id for h in hits} == {p.id for p in KEPT}
    assert store.count() == before  # every fuzzed paper broke a rule: nothing was written


def test_every_kind_reaches_every_method() -> None:
    from tests.fuzzing import requests

    seen = {(method, kind) for method, kind, _ in requests(seed=0, count=40)}
    assert seen == {(m, k) for m in METHODS for k in KINDS}


def test_fuzzed_http_requests_get_json_errors_never_5xx(
    sample_settings: Settings, embedder_dir: Path, tmp_path: Path,
) -> None:
    """The same hostile messages as JSON, and what only JSON gets wrong, over HTTP."""
    from tests.http_fuzzing import fuzz as fuzz_http
    from tests.ports import free_port

    with scratch_gateways(sample_settings, Encoder(embedder_dir), tmp_path, KEPT) as (
            servers, backend, store):
        port = free_port()
        target = servers.start(backend, http_port=port)
        report = fuzz_http(f"http://127.0.0.1:{port}", seed=3, count=300)
        assert report.sent == 300 and report.bad == [], report.bad[:5]
        assert report.statuses["400"] > 100  # the hostile inputs were refused
        assert len(report.by_method) == 6
        with SearchClient(target, timeout_s=60) as client:
            assert client.health() == "SERVING"
        assert store.count() == len(KEPT)  # every fuzzed paper broke a rule

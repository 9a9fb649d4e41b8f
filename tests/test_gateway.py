"""The grpc.aio gateway over the in-process backend (real ONNX encoder and reranker, real
embedded Qdrant shard of the sample corpus), spoken to over real channels. No Ray here."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from papersearch.api import convert
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.gateway.errors import Overloaded, to_status
from papersearch.index.errors import StoreUnavailable
from papersearch.index.factory import open_store
from papersearch.index.query import Hit, Mode, SearchFilter
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.factory import open_index
from papersearch.pipeline.query import SearchQuery
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings
from tests.gateway_helpers import LoopThread, Servers, free_port

pytestmark = pytest.mark.slow

FEDWON_QUERY = "federated learning across domains without batch normalization"


def code_of(info: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


def details_of(info: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return info.value.details() or ""  # type: ignore[attr-defined,no-any-return]


class Faulty(LocalBackend):
    """The real backend with faults switched on per test; ready() always fails."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.fault: str | None = None
        self.cancelled = threading.Event()

    async def encode_query(self, text: str) -> np.ndarray:
        if self.fault == "slow":
            try:
                await asyncio.sleep(3)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.fault == "overloaded":
            raise Overloaded("Encoder queue is full (max_queued_requests=8)")
        if self.fault == "internal":
            raise RuntimeError("secret internals")
        return await super().encode_query(text)

    async def retrieve(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter
    ) -> list[Hit]:
        if self.fault == "store_down":
            raise StoreUnavailable("qdrant query: StatusCode.UNAVAILABLE: connection refused")
        return await super().retrieve(text, vector, mode, limit, flt)

    async def rerank(self, query: str, passages: Sequence[str]) -> np.ndarray:
        if self.fault == "rerank":
            raise RuntimeError("reranker replica died")
        return await super().rerank(query, passages)

    async def ready(self) -> bool:
        raise StoreUnavailable("index not reachable")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts(sample_settings: Settings, sample_index: Path, embedder_dir: Path,
          reranker_dir: Path) -> Iterator[tuple[Encoder, Any, Reranker]]:
    encoder = Encoder(embedder_dir)
    store = open_index(sample_settings, encoder)
    yield encoder, store, Reranker(reranker_dir)
    store.close()


@pytest.fixture(scope="module")
def scratch_store(sample_settings: Settings, parts: tuple[Encoder, Any, Reranker],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An empty collection of its own for the write tests (the sample index stays as is)."""
    settings = sample_settings.model_copy(update={"index": sample_settings.index.model_copy(
        update={"data_dir": tmp_path_factory.mktemp("gateway-index")})})
    store = open_index(settings, parts[0], create=True)
    yield store
    store.close()


@pytest.fixture(scope="module")
def faulty(parts: tuple[Encoder, Any, Reranker]) -> Faulty:
    return Faulty(*parts)


@pytest.fixture(scope="module")
def targets(sample_settings: Settings, parts: tuple[Encoder, Any, Reranker], faulty: Faulty,
            scratch_store: Any) -> Iterator[dict[str, str]]:
    encoder, store, reranker = parts
    loop = LoopThread()
    servers = Servers(loop, sample_settings)
    main = LocalBackend(encoder, store, reranker)
    try:
        yield {
            "main": servers.start(main),
            "auth": servers.start(main, api_keys=[SecretStr("k1")]),
            "faulty": servers.start(faulty),
            "scratch": servers.start(LocalBackend(encoder, scratch_store, reranker)),
        }
    finally:
        servers.stop()
        loop.close()


@pytest.fixture(scope="module")
def client(targets: dict[str, str]) -> Iterator[SearchClient]:
    with SearchClient(targets["main"], timeout_s=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def stub(client: SearchClient) -> pb_grpc.SearchServiceStub:
    return client.search_stub


@pytest.fixture
def fault(faulty: Faulty, targets: dict[str, str]) -> Iterator[tuple[Faulty, SearchClient]]:
    faulty.fault = None
    faulty.cancelled.clear()
    with SearchClient(targets["faulty"], timeout_s=60.0) as client:
        yield faulty, client
    faulty.fault = None


def wait_for_status(client: SearchClient, wanted: str, service: str = "",
                    within_s: float = 15.0) -> str:
    deadline = time.monotonic() + within_s
    status = client.health(service)
    while status != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.health(service)
    return status


# --- search ----------------------------------------------------------------------------------


def test_search_finds_the_paper_with_stage_scores_and_timings(client: SearchClient) -> None:
    result = client.search(SearchQuery(FEDWON_QUERY, top_k=5))
    titles = [h.paper.title for h in result.hits]
    assert any(t.startswith("FedWon") for t in titles[:3]), titles
    assert result.reranked and len(result.hits) == 5
    assert {"encode", "retrieve", "rerank", "total"} <= set(result.timings_ms)
    assert all(v >= 0 for v in result.timings_ms.values())
    for hit in result.hits:
        assert hit.stages.rerank is not None and hit.stages.fused is not None
        assert hit.stages.dense is not None
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_single_stage_modes_find_the_paper(client: SearchClient, mode: Mode) -> None:
    result = client.search(SearchQuery(FEDWON_QUERY, top_k=3, mode=mode, rerank=False))
    assert not result.reranked and "rerank" not in result.timings_ms
    assert any(h.paper.title.startswith("FedWon") for h in result.hits), result.hits
    top = result.hits[0].stages
    assert top.fused is None and top.rerank is None
    assert (top.dense if mode == "dense" else top.sparse) is not None


def test_top_k_zero_means_the_default(stub: pb_grpc.SearchServiceStub) -> None:
    response = stub.Search(pb.SearchRequest(query="diffusion models for image generation",
                                            rerank=False), timeout=60)
    assert len(response.hits) == 10 and not response.reranked


def test_query_at_the_length_limit_is_accepted(stub: pb_grpc.SearchServiceStub) -> None:
    text = ("federated learning " * 200)[:2048]
    response = stub.Search(pb.SearchRequest(query=text, top_k=1, rerank=False), timeout=60)
    assert len(response.hits) == 1


@pytest.mark.parametrize(("request_kwargs", "message"), [
    ({"query": ""}, "query must not be empty"),
    ({"query": "  \n\t "}, "query must not be empty"),
    ({"query": "q" * 2049}, "query is 2049 characters; the limit is 2048"),
    ({"query": "graphs", "top_k": 101}, "top_k must be between 1 and 100"),
    ({"query": "graphs", "top_k": -3}, "got -3"),
    ({"query": "graphs", "filter": pb.Filter(published_from="2024-13-01")},
     "filter.published_from is not a valid date: '2024-13-01'"),
    ({"query": "graphs", "filter": pb.Filter(published_to="yesterday")},
     "filter.published_to must be a date as YYYY-MM-DD, got 'yesterday'"),
    ({"query": "graphs", "filter": pb.Filter(published_from="2024-02-01",
                                             published_to="2024-01-31")},
     "filter.published_from (2024-02-01) is after filter.published_to (2024-01-31)"),
    ({"query": "graphs", "mode": 99}, "unknown mode 99"),
], ids=["empty", "blank", "too-long", "top-k-101", "top-k-negative", "bad-month",
        "not-a-date", "from-after-to", "unknown-mode"])
def test_invalid_search_requests(stub: pb_grpc.SearchServiceStub,
                                 request_kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(pb.SearchRequest(**request_kwargs), timeout=10)
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details_of(info)


def test_similar_and_get(client: SearchClient) -> None:
    first = client.search(SearchQuery(FEDWON_QUERY, top_k=1, rerank=False)).hits[0].paper
    assert client.get(first.id) == first
    similar = client.similar(first.id, top_k=5)
    assert len(similar.hits) == 5 and first.id not in {h.paper.id for h in similar.hits}
    assert all(h.stages.dense is not None for h in similar.hits)


@pytest.mark.parametrize("call", ["GetPaper", "SimilarPapers"])
def test_unknown_paper_is_not_found(stub: pb_grpc.SearchServiceStub, call: str) -> None:
    request = (pb.GetPaperRequest if call == "GetPaper" else pb.SimilarPapersRequest)(
        paper_id="no-such-paper")
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, call)(request, timeout=10)
    assert code_of(info) == grpc.StatusCode.NOT_FOUND
    assert "'no-such-paper'" in details_of(info)


# --- index writes ----------------------------------------------------------------------------


def test_upsert_stream_search_and_delete(targets: dict[str, str]) -> None:
    papers = [
        Paper(id="new-1", title="Quantum annealing for protein folding",
              abstract="We fold small proteins on a quantum annealer by encoding the lattice "
                       "model as an Ising problem."),
        Paper(id="new-2", title="Coral reef bleaching under marine heatwaves",
              abstract="Satellite sea surface temperatures predict bleaching of coral reefs."),
    ]
    stream = [*(convert.paper_to_proto(p) for p in papers), pb.Paper(paper_id="bad-1")]
    with SearchClient(targets["scratch"], timeout_s=60.0) as client:
        summary = client.index_stub.UpsertPapers(iter(stream), timeout=60)
        assert (summary.received, summary.upserted, summary.skipped) == (3, 2, 1)
        assert len(summary.errors) == 1
        assert "paper 3 ('bad-1')" in summary.errors[0]
        assert "neither title nor abstract" in summary.errors[0]

        hits = client.search(SearchQuery("protein folding with a quantum annealer", top_k=2)).hits
        assert hits[0].paper.id == "new-1"
        assert client.get("new-1").title == papers[0].title

        assert client.delete(["new-1", "never-indexed", "new-1"]) == 1
        with pytest.raises(grpc.RpcError) as info:
            client.get("new-1")
        assert code_of(info) == grpc.StatusCode.NOT_FOUND
        assert [h.paper.id for h in client.search(SearchQuery("protein folding")).hits] == [
            "new-2"]

        with pytest.raises(grpc.RpcError) as info:
            client.delete([])
        assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
        assert "paper_ids must not be empty" in details_of(info)


# --- failures ----------------------------------------------------------------------------------


def test_deadline_cancels_the_server_side_work(fault: tuple[Faulty, SearchClient]) -> None:
    backend, client = fault
    backend.fault = "slow"
    with pytest.raises(grpc.RpcError) as info:
        client.search(SearchQuery("graph neural networks"), timeout_s=0.5)
    assert code_of(info) == grpc.StatusCode.DEADLINE_EXCEEDED
    # the slow encode runs for minutes unless cancelled: the wait only guards against a hang
    assert backend.cancelled.wait(60), "the server kept encoding after the deadline"


def test_overload_is_resource_exhausted(fault: tuple[Faulty, SearchClient]) -> None:
    backend, client = fault
    backend.fault = "overloaded"
    with pytest.raises(grpc.RpcError) as info:
        client.search(SearchQuery("graph neural networks"))
    assert code_of(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in details_of(info) and "retry" in details_of(info)


def test_store_unavailable_is_unavailable(fault: tuple[Faulty, SearchClient]) -> None:
    backend, client = fault
    backend.fault = "store_down"
    with pytest.raises(grpc.RpcError) as info:
        client.search(SearchQuery("graph neural networks", rerank=False))
    assert code_of(info) == grpc.StatusCode.UNAVAILABLE
    assert "unavailable" in details_of(info)


def test_unreachable_qdrant_server_maps_to_unavailable(
    sample_settings: Settings, parts: tuple[Encoder, Any, Reranker]
) -> None:
    index = sample_settings.index.model_copy(update={
        "backend": "server", "url": f"http://127.0.0.1:{free_port()}",
        "grpc_port": free_port(), "timeout_s": 1,
    })
    store = open_store(index)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.ensure_collection(parts[0].dim, parts[0].sha256, create=False)
    finally:
        store.close()
    assert time.monotonic() - started < 60  # a hang guard: without timeout_s it retries on
    code, message = to_status(info.value)
    assert code == grpc.StatusCode.UNAVAILABLE and message.startswith("service unavailable")


def test_unexpected_error_is_internal_without_details(fault: tuple[Faulty, SearchClient]) -> None:
    backend, client = fault
    backend.fault = "internal"
    with pytest.raises(grpc.RpcError) as info:
        client.search(SearchQuery("graph neural networks"))
    assert code_of(info) == grpc.StatusCode.INTERNAL
    details = details_of(info)
    assert "incident" in details
    assert "secret internals" not in details and "Traceback" not in details
    assert "RuntimeError" not in details


def test_failing_reranker_falls_back_to_fused_results(fault: tuple[Faulty, SearchClient]) -> None:
    backend, client = fault
    backend.fault = "rerank"
    result = client.search(SearchQuery(FEDWON_QUERY))
    assert not result.reranked and len(result.hits) == 10
    assert all(h.stages.rerank is None and h.stages.fused is not None for h in result.hits)
    assert any(h.paper.title.startswith("FedWon") for h in result.hits[:3])


# --- auth, health, reflection ------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong"], ids=["no-key", "wrong-key"])
def test_api_key_required(targets: dict[str, str], key: str | None) -> None:
    with SearchClient(targets["auth"], api_key=key, timeout_s=10.0) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.search(SearchQuery("graph neural networks"))
        assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
        assert "x-api-key" in details_of(info)
        with pytest.raises(grpc.RpcError) as info:
            # invalid only: even if auth let it through, nothing would be written
            client.index_stub.UpsertPapers(iter([pb.Paper(paper_id="x")]),
                                           metadata=client.metadata, timeout=10)
        assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
        assert wait_for_status(client, "SERVING") == "SERVING"  # health needs no key


def test_right_api_key_works(targets: dict[str, str]) -> None:
    with SearchClient(targets["auth"], api_key="k1", timeout_s=60.0) as client:
        assert client.search(SearchQuery(FEDWON_QUERY, top_k=3, rerank=False)).hits
        # an invalid-only stream passes auth without writing to the shared sample index
        summary = client.index_stub.UpsertPapers(iter([pb.Paper(paper_id="x")]),
                                                 metadata=client.metadata, timeout=10)
        assert (summary.received, summary.upserted, summary.skipped) == (1, 0, 1)


def test_health_check_and_watch(client: SearchClient) -> None:
    for service in ("", "papersearch.v1.SearchService", "papersearch.v1.IndexService"):
        assert wait_for_status(client, "SERVING", service) == "SERVING", service
    watch = client.health_stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    try:
        first = next(watch)
    finally:
        watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_health_stays_not_serving_when_the_backend_is_not_ready(
    fault: tuple[Faulty, SearchClient],
) -> None:
    _, client = fault
    time.sleep(1.0)  # five health polls
    assert client.health() == "NOT_SERVING"
    assert client.health("papersearch.v1.SearchService") == "NOT_SERVING"


@pytest.mark.parametrize("target", ["main", "auth"])
def test_reflection_lists_the_services(targets: dict[str, str], target: str) -> None:
    with grpc.insecure_channel(targets[target]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"papersearch.v1.SearchService", "papersearch.v1.IndexService",
            "grpc.health.v1.Health"} <= names

"""The grpc.aio gateway over the in-process backend (real ONNX encoder and reranker, real
embedded Qdrant shard of the sample corpus), spoken to over real channels. No Ray here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import date
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
from papersearch.client import (
    AsyncSearchClient,
    SearchClient,
    committed_messages_of,
    committed_of,
)
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.errors import Overloaded
from papersearch.gateway import errors as gateway_errors
from papersearch.gateway.errors import to_status
from papersearch.gateway.server import server_options
from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    StorageExhausted,
    StoreUnavailable,
    WeightingMismatch,
)
from papersearch.index.factory import open_store
from papersearch.index.query import Mode, SearchFilter
from papersearch.models.manifest import ModelNotFound
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.factory import open_index
from papersearch.pipeline.query import SearchQuery
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retrieved, Retriever
from papersearch.settings import ServeSettings, Settings
from papersearch.telemetry import Metrics
from tests.gateway_helpers import LoopThread, Servers, scratch_gateways
from tests.ports import free_port

pytestmark = pytest.mark.slow

FEDWON_QUERY = "federated learning across domains without batch normalization"
SMALL_RECEIVE_BYTES = 64 * 1024
SMALL_SEND_BYTES = 16 * 1024


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
            raise Overloaded("Encoder queue is full (max_queued_requests=8)", "max_queued_requests")
        if self.fault == "internal":
            raise RuntimeError("secret internals")
        return await super().encode_query(text)

    async def retrieve(
        self, text: str, vector: np.ndarray | None, mode: Mode, limit: int, flt: SearchFilter,
        explain: bool = False, feedback: bool | None = None,
    ) -> Retrieved:
        if self.fault == "store_down":
            raise StoreUnavailable("qdrant query: StatusCode.UNAVAILABLE: connection refused")
        return await super().retrieve(text, vector, mode, limit, flt, explain, feedback)

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
    scratch = LocalBackend(encoder, scratch_store, reranker)
    try:
        yield {
            "main": servers.start(main),
            "auth": servers.start(main, api_keys=[SecretStr("k1")]),
            "faulty": servers.start(faulty),
            "scratch": servers.start(scratch),
            # small server limits, so the tests reach them quickly (same scratch index)
            "small": servers.start(scratch, max_receive_bytes=SMALL_RECEIVE_BYTES,
                                   max_index_calls=1, upsert_max_errors=5),
            "short": servers.start(scratch, index_call_timeout_s=2.0, upsert_batch_size=1),
            "small_send": servers.start(main, max_send_bytes=SMALL_SEND_BYTES),
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
    ({"query": "graphs", "min_relevance": 1.5}, "min_relevance must be between -1 and 1"),
    ({"query": "graphs", "mode": pb.MODE_SPARSE, "min_relevance": 0.2},
     "min_relevance needs mode dense or hybrid"),
], ids=["empty", "blank", "too-long", "top-k-101", "top-k-negative", "bad-month",
        "not-a-date", "from-after-to", "unknown-mode", "min-relevance-2", "min-relevance-sparse"])
def test_invalid_search_requests(stub: pb_grpc.SearchServiceStub,
                                 request_kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(pb.SearchRequest(**request_kwargs), timeout=10)
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details_of(info)


def test_min_relevance_drops_the_hits_below_it_and_says_how_many(client: SearchClient) -> None:
    uncut = client.search(SearchQuery(FEDWON_QUERY, top_k=10, rerank=False))
    cosines = sorted(h.stages.dense for h in uncut.hits if h.stages.dense is not None)
    assert len(cosines) == 10 and uncut.below_min_relevance == 0  # every hybrid hit has one
    threshold = cosines[4]  # the 6th best: 6 stay, 4 go
    cut = client.search(SearchQuery(FEDWON_QUERY, top_k=10, rerank=False,
                                    min_relevance=threshold))
    assert [h.paper.id for h in cut.hits] == [
        h.paper.id for h in uncut.hits if h.stages.dense is not None
        and h.stages.dense >= threshold]
    assert len(cut.hits) == 6 and cut.below_min_relevance == 4
    assert all(h.stages.dense is not None and h.stages.dense >= threshold for h in cut.hits)


def test_explain_over_grpc(client: SearchClient) -> None:
    """SearchRequest.explain: every hit's Explanation crosses the wire (reranked ones with the
    rerank stage and its fusion); without it none is sent. One pass (feedback false), so the
    explained dense stage is the hit's own dense score (with feedback it is the expanded
    query's: test_feedback_over_grpc)."""
    plain = client.search(SearchQuery(FEDWON_QUERY, top_k=5, feedback=False))
    assert all(h.explanation is None for h in plain.hits)
    result = client.search(SearchQuery(FEDWON_QUERY, top_k=5, explain=True, feedback=False))
    assert result.reranked and [h.paper.id for h in result.hits] == [
        h.paper.id for h in plain.hits]
    for hit in result.hits:
        why = hit.explanation
        assert why is not None and why.fused and why.dense and why.sparse and why.rerank
        assert why.dense.score == pytest.approx(hit.stages.dense)
        assert why.rerank.score == pytest.approx(hit.stages.rerank)
        assert why.rerank.rank is not None and 1 <= why.rerank.rank
        assert "convex:" in why.fusion and "rerank:" in why.fusion
        assert why.fusion_inputs["first_stage_rank"] == why.fused.rank
        assert sum(s for _, s in why.terms) == pytest.approx(hit.stages.sparse or 0.0,
                                                             rel=1e-4)


def test_feedback_over_grpc(client: SearchClient, parts: tuple[Encoder, Any, Reranker]) -> None:
    """Query feedback is the server's default (index.prf_enabled, a search at a time: nothing
    shed): an unset SearchRequest.feedback and feedback=true give the in-process Retriever's
    hits with feedback, their dense scores the cosines to the query as asked (an explanation's
    dense stage is the expanded query's, the one fused); feedback=false is the single pass."""
    encoder, store, _ = parts
    query = SearchQuery(FEDWON_QUERY, top_k=10, rerank=False)
    default = client.search(query)
    fed = client.search(dataclasses.replace(query, feedback=True))
    assert store.settings.prf_enabled
    vector = encoder.encode_queries([FEDWON_QUERY])[0]
    expected = Retriever(store).search(FEDWON_QUERY, vector, limit=10, feedback=True)
    assert [h.paper.id for h in fed.hits] == [h.paper.id for h in expected]
    assert [h.paper.id for h in default.hits] == [h.paper.id for h in expected]
    off = client.search(dataclasses.replace(query, feedback=False))
    plain = Retriever(store).search(FEDWON_QUERY, vector, limit=10, feedback=False)
    assert [h.paper.id for h in off.hits] == [h.paper.id for h in plain]
    assert [h.paper.id for h in fed.hits] != [h.paper.id for h in off.hits]
    assert default.feedback and fed.feedback and not off.feedback  # it ran, or not
    cosines = {h.paper.id: h.stages.dense for h in client.search(
        SearchQuery(FEDWON_QUERY, top_k=100, mode="dense", rerank=False)).hits}
    shared = [h for h in fed.hits if h.paper.id in cosines]
    assert shared and all(h.stages.dense == pytest.approx(cosines[h.paper.id], abs=1e-4)
                          for h in shared)
    explained = client.search(dataclasses.replace(query, explain=True)).hits[0]
    assert explained.explanation is not None and explained.explanation.dense is not None
    assert explained.explanation.dense.score != pytest.approx(explained.stages.dense, abs=1e-4)
    # asked for where it cannot run: a dense search; a hybrid one with no BM25 term
    for asked in (dataclasses.replace(query, mode="dense"), SearchQuery("the of and a")):
        answer = client.search(dataclasses.replace(asked, feedback=True, rerank=False))
        assert answer.hits and not answer.feedback


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


def test_many_ids_to_delete_are_read_off_the_event_loop(
        targets: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 ids built to be slow to normalise held the gateway's loop ~0.8 s: past
    IDS_INLINE they are read in a worker thread, a few inline; a bad one is refused as
    before."""
    from papersearch.gateway import servicers

    read_in: list[str] = []
    real = convert.paper_ids_from_proto

    def traced(values: Sequence[str]) -> tuple[str, ...]:
        read_in.append(threading.current_thread().name)
        return real(values)

    monkeypatch.setattr(servicers.convert, "paper_ids_from_proto", traced)
    many = [f"never-indexed-{i}" for i in range(servicers.IDS_INLINE + 1)]
    with SearchClient(targets["scratch"], timeout_s=60.0) as client:
        assert client.delete(many[:2]) == 0 and client.delete(many) == 0
        with pytest.raises(grpc.RpcError) as info:
            client.delete([*many, " "])
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    loop_thread, *workers = read_in
    assert len(workers) == 2 and all(w != loop_thread for w in workers)


# --- server limits ---------------------------------------------------------------------------


def test_server_options_name_grpc_core_channel_args() -> None:
    options = dict(server_options(ServeSettings()))
    # gRPC's own limit lies above serve.max_receive_bytes: the gateway refuses past its own
    assert options["grpc.max_receive_message_length"] == 8 * 1024 * 1024
    # ... by at most its size (a lowered limit still bounds what gRPC buffers), within gRPC's
    # int
    assert dict(server_options(ServeSettings(max_receive_bytes=1024)))[
        "grpc.max_receive_message_length"] == 2048
    assert dict(server_options(ServeSettings(max_receive_bytes=2**31 - 1)))[
        "grpc.max_receive_message_length"] == 2**31 - 1
    assert options["grpc.max_send_message_length"] == 16 * 1024 * 1024
    assert options["grpc.max_concurrent_streams"] == 1024
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000


def search_request_of(size: int) -> pb.SearchRequest:
    """A SearchRequest whose encoding is exactly ``size`` bytes."""
    request = pb.SearchRequest(query="q" * size)
    request.query = "q" * (size - (request.ByteSize() - size))
    assert request.ByteSize() == size
    return request


def test_message_at_the_receive_limit_is_read_one_byte_more_is_resource_exhausted(
    targets: dict[str, str],
) -> None:
    with grpc.insecure_channel(targets["small"]) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(search_request_of(SMALL_RECEIVE_BYTES), timeout=30)
        assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT  # read, then validated
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(search_request_of(SMALL_RECEIVE_BYTES + 1), timeout=30)
        assert code_of(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details_of(info) == (f"the request message is {SMALL_RECEIVE_BYTES + 1} bytes, "
                                    f"past the server's limit of {SMALL_RECEIVE_BYTES} bytes "
                                    "(serve.max_receive_bytes)")


def test_an_upsert_message_past_the_limit_fails_the_stream_with_what_it_committed(
    targets: dict[str, str],
) -> None:
    """Past gRPC's own limit a client stream just ended: the gateway committed the papers it
    held, answered into a call gRPC had already failed (the client saw RESOURCE_EXHAUSTED
    without what was committed) and counted it OK."""
    small = [pb.Paper(paper_id=f"big-{i}", title=f"Paper {i}") for i in (1, 2)]
    huge = pb.Paper(paper_id="big-3", title="t", abstract="a" * (SMALL_RECEIVE_BYTES + 100))
    with grpc.insecure_channel(targets["small"]) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.IndexServiceStub(channel).UpsertPapers(iter([*small, huge]), timeout=60)
    assert code_of(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details_of(info).startswith(f"message 3 of the stream is {huge.ByteSize()} bytes, "
                                       f"past the server's limit of {SMALL_RECEIVE_BYTES} bytes")
    assert committed_of(info.value) == 0 and committed_messages_of(info.value) == 0
    with SearchClient(targets["small"], timeout_s=60.0) as client:
        assert client.delete(["big-1", "big-2"]) == 0  # nothing written behind the client


def test_results_past_the_send_limit_are_out_of_range_not_retried(
    targets: dict[str, str],
) -> None:
    """gRPC failed them with RESOURCE_EXHAUSTED, which clients retry with backoff, and every
    retry failed the same way; fewer results fit."""
    with grpc.insecure_channel(targets["small_send"]) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        few = stub.Search(pb.SearchRequest(query="diffusion models", top_k=3), timeout=60)
        assert 0 < few.ByteSize() <= SMALL_SEND_BYTES
        for call in (lambda: stub.Search(pb.SearchRequest(query="diffusion models", top_k=100),
                                         timeout=60),
                     lambda: stub.SimilarPapers(pb.SimilarPapersRequest(
                         paper_id=few.hits[0].paper.paper_id, top_k=100), timeout=60)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert code_of(info) == grpc.StatusCode.OUT_OF_RANGE
            assert "serve.max_send_bytes" in details_of(info) and "top_k" in details_of(info)


def test_index_writes_past_the_cap_are_resource_exhausted(targets: dict[str, str]) -> None:
    release = threading.Event()

    def held_stream() -> Iterator[pb.Paper]:
        yield pb.Paper(paper_id="held-1")  # invalid: nothing is written
        release.wait(60)

    refused: grpc.RpcError | None = None
    with grpc.insecure_channel(targets["small"]) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        held = stub.UpsertPapers.future(held_stream(), timeout=60)
        try:
            # the first delete may come before the held stream is admitted: try until refused
            give_up = time.monotonic() + 30  # a hang guard
            while refused is None and time.monotonic() < give_up:
                try:
                    stub.DeletePapers(pb.DeletePapersRequest(paper_ids=["never"]), timeout=10)
                except grpc.RpcError as error:
                    refused = error
                time.sleep(0.05)
            assert refused is not None, "a write past serve.max_index_calls was let through"
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            details = refused.details()  # type: ignore[attr-defined]
            assert "serve.max_index_calls" in details and "retry DeletePapers later" in details
            with pytest.raises(grpc.RpcError) as invalid:  # while the slot is taken still
                stub.DeletePapers(pb.DeletePapersRequest(paper_ids=[]), timeout=10)
            # it can never succeed: told so, not RESOURCE_EXHAUSTED (which clients retry)
            assert code_of(invalid) == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            release.set()
        summary = held.result(timeout=60)
        assert (summary.received, summary.upserted, summary.skipped) == (1, 0, 1)
        # the slot is free again
        stub.DeletePapers(pb.DeletePapersRequest(paper_ids=["never"]), timeout=10)


def test_papers_that_fail_midway_end_the_stream_with_those_before_written(
    targets: dict[str, str],
) -> None:
    """The caller's iterable raising (a bad line of its corpus) cancelled the call: the papers
    before it, still in the gateway's unwritten batch, were dropped and the count lost."""
    def papers() -> Iterator[Paper]:
        yield Paper(id="midway-1", title="Glacier calving seen by seismometers",
                    abstract="Icequakes at the terminus time each calving event.")
        yield Paper(id="midway-2", title="Seed dispersal by fruit bats",
                    abstract="Bats carry seeds kilometres across fragmented forest.")
        raise ValueError("corpus.jsonl:3: not JSON")

    with SearchClient(targets["scratch"], timeout_s=60.0) as client:
        with pytest.raises(ValueError, match="corpus.jsonl:3") as info:
            client.upsert(papers())
        assert info.value.__notes__ == [
            "the 2 papers before it were sent: 2 committed, 0 skipped"]
        assert client.get("midway-2").title == "Seed dispersal by fruit bats"
        assert client.delete(["midway-1", "midway-2"]) == 2


def test_the_asyncio_client_makes_every_call(targets: dict[str, str]) -> None:
    """AsyncSearchClient had the load test's calls only (search, health): an asyncio
    application wrote, read and watched through SearchClient in threads."""
    papers = [Paper(id="aio-1", title="Event loops for sensor networks",
                    abstract="Motes schedule radio work on a cooperative event loop.",
                    published=date(2031, 5, 1)),
              Paper(id="aio-2", title="Cooperative scheduling on microcontrollers",
                    abstract="Tasks yield at every radio wait.", published=date(2031, 5, 2))]

    async def feed() -> AsyncIterator[Paper]:
        for paper in papers:
            yield paper
        raise ValueError("feed.jsonl:3: not JSON")

    async def calls() -> None:
        async with AsyncSearchClient(targets["scratch"], timeout_s=60.0) as client:
            with pytest.raises(ValueError, match="feed.jsonl:3") as failed:
                await client.upsert(feed())
            assert failed.value.__notes__ == [
                "the 2 papers before it were sent: 2 committed, 0 skipped"]
            assert (await client.upsert(papers[:1])).upserted == 1  # a plain iterable too
            assert (await client.get("aio-2")).title == papers[1].title
            similar = await client.similar("aio-1", top_k=5)
            assert similar.hits and "aio-1" not in [hit.paper.id for hit in similar.hits]
            query = convert.WatchQuery("sensor network event loops", min_relevance=-1.0,
                                       replay_since=date(2031, 1, 1))
            async with client.watch(query, timeout_s=60.0) as watching:
                events = []
                async for event in watching:
                    events.append(event)
                    if event.caught_up:
                        break
            assert {e.hit.paper.id for e in events if e.hit} == {"aio-1", "aio-2"}
            assert all(e.replayed for e in events if e.hit)
            with pytest.raises(TypeError, match="write delete"):
                await client.delete("aio-1")
            assert await client.delete(["aio-1", "aio-2"]) == 2

    asyncio.run(calls())


@pytest.mark.parametrize(("client_s", "whose"), [
    (60.0, "(2 s, serve.index_call_timeout_s)"),  # the client's deadline only a hang guard
    # the client's deadline the sooner: the answer still says what was committed
    (1.5, " s, the client's, less a margin)"),
])
def test_idle_upsert_stream_hits_the_server_deadline_and_keeps_what_it_wrote(
    targets: dict[str, str], client_s: float, whose: str,
) -> None:
    paper = Paper(id="deadline-1", title="Tidal stream turbines in narrow straits",
                  abstract="We model the power a row of tidal turbines extracts from a strait.")
    stop = threading.Event()

    def idle_stream() -> Iterator[pb.Paper]:
        yield convert.paper_to_proto(paper)  # written at once (upsert_batch_size=1)
        stop.wait(60)  # then idle: a deadline ends the call

    try:
        with grpc.insecure_channel(targets["short"]) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.IndexServiceStub(channel).UpsertPapers(idle_stream(), timeout=client_s)
    finally:
        stop.set()
    assert code_of(info) == grpc.StatusCode.DEADLINE_EXCEEDED
    details = details_of(info)
    assert details.startswith("UpsertPapers ran past its deadline (") and whose in details
    assert "committed before the failure: 1 papers, the stream's first 1 messages" in details
    assert committed_of(info.value) == 1 and committed_messages_of(info.value) == 1
    with SearchClient(targets["scratch"], timeout_s=60.0) as client:
        assert client.get("deadline-1").title == paper.title
        assert client.delete(["deadline-1"]) == 1


def test_upsert_error_summary_lists_the_first_n(targets: dict[str, str]) -> None:
    stream = [pb.Paper(paper_id=f"bad-{i}") for i in range(1, 13)]
    with grpc.insecure_channel(targets["small"]) as channel:
        summary = pb_grpc.IndexServiceStub(channel).UpsertPapers(iter(stream), timeout=60)
    assert (summary.received, summary.upserted, summary.skipped) == (12, 0, 12)
    assert len(summary.errors) == 5  # serve.upsert_max_errors
    assert all(e.startswith(f"paper {i} (") for i, e in enumerate(summary.errors, 1))
    assert summary.skipped - len(summary.errors) == 7  # the rest: counted, not listed


class FailsOnBatch(LocalBackend):
    """The real backend over the real embedded index, whose ``fail_on``-th write raises as an
    index going away would (once; later writes go through)."""

    def __init__(self, backend: LocalBackend, fail_on: int) -> None:
        super().__init__(backend.encoder, backend.store, None)
        self.fail_on = fail_on
        self.writes = 0

    async def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        self.writes += 1
        if self.writes == self.fail_on:
            raise StoreUnavailable("qdrant-edge upsert failed: No space left on device")
        return await super().upsert(papers, dense)


def test_upsert_failing_midway_reports_what_it_committed_and_the_rest_can_be_resent(
    sample_settings: Settings, embedder_dir: Path, tmp_path: Path,
) -> None:
    papers = [Paper(id=f"mid-{i}", title=f"Tidal energy in strait number {i}",
                    abstract=f"Paper {i} of a stream whose third batch fails.")
              for i in range(1, 11)]
    stream = [convert.paper_to_proto(p) for p in papers]
    stream.insert(1, pb.Paper(paper_id="bad-2"))  # invalid: skipped, not a failure
    with scratch_gateways(sample_settings, Encoder(embedder_dir), tmp_path) as (
        servers, backend, store,
    ):
        # batches of 3 papers: messages 1-4 (one invalid), 5-7, then 8-10 fails
        target = servers.start(FailsOnBatch(backend, fail_on=3), upsert_batch_size=3)
        with SearchClient(target, timeout_s=60.0) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.index_stub.UpsertPapers(iter(stream), timeout=60)
            assert code_of(info) == grpc.StatusCode.UNAVAILABLE
            assert committed_of(info.value) == 6 == store.count()
            assert committed_messages_of(info.value) == 7
            assert "committed before the failure: 6 papers, the stream's first 7 messages; " \
                   "resend from message 8" in details_of(info)
            assert store.existing_ids(p.point_id for p in papers) == {
                p.point_id for p in papers[:6]}

            summary = client.index_stub.UpsertPapers(iter(stream[7:]), timeout=60)
            assert (summary.received, summary.upserted) == (4, 4)
            assert store.count() == 10
            summary = client.index_stub.UpsertPapers(iter(stream), timeout=60)  # all again
            assert (summary.received, summary.upserted, summary.skipped) == (11, 10, 1)
            assert store.count() == 10


def test_committed_is_unknown_without_the_gateways_trailer() -> None:
    class Failed(grpc.RpcError):
        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("other", "1"), ("papersearch-committed", "x"))

    assert committed_of(grpc.RpcError()) is None
    assert committed_of(Failed()) is None and committed_messages_of(Failed()) is None


# --- failures ----------------------------------------------------------------------------------


def test_deadline_cancels_the_server_side_work(fault: tuple[Faulty, SearchClient]) -> None:
    backend, client = fault
    backend.fault = "slow"
    with pytest.raises(grpc.RpcError) as info:
        client.search(SearchQuery("graph neural networks"), timeout_s=0.5)
    assert code_of(info) == grpc.StatusCode.DEADLINE_EXCEEDED
    # the slow encode runs for minutes unless cancelled: the wait only guards against a hang
    assert backend.cancelled.wait(60), "the server kept encoding after the deadline"


def test_overload_is_resource_exhausted_naming_the_full_queue(
    fault: tuple[Faulty, SearchClient], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every queue's refusal read "server overloaded: queues are full" and counted only as
    RESOURCE_EXHAUSTED: an operator could not tell Serve's queue (add replicas) from the
    gateway's index queue (Qdrant) or a limit to raise. The message keeps the reason, and
    papersearch_refused counts it by its bound, also when it crossed Ray's pickling."""
    refused: list[str] = []
    monkeypatch.setattr(Metrics, "refused", lambda self, limit: refused.append(limit))
    backend, client = fault
    backend.fault = "overloaded"
    with pytest.raises(grpc.RpcError) as info:
        client.search(SearchQuery("graph neural networks"))
    assert code_of(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in details_of(info) and "retry" in details_of(info)
    assert "max_queued_requests=8" in details_of(info)
    assert refused == ["max_queued_requests"]
    again = pickle.loads(pickle.dumps(Overloaded("full", "serve.max_index_queue")))
    assert (str(again), again.limit) == ("full", "serve.max_index_queue")


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
    raised: list[Exception] = []

    def ensure() -> None:  # in a daemon thread: a hang fails the test, not the session
        try:
            store.ensure_collection(parts[0].dim, parts[0].sha256, create=False)
        except Exception as error:  # noqa: BLE001 (the error is the result looked at)
            raised.append(error)

    opening = threading.Thread(target=ensure, daemon=True)
    opening.start()
    opening.join(60)  # a hang guard: without timeout_s it retries on
    try:
        assert not opening.is_alive(), "still trying to reach the index after 60 s"
    finally:
        store.close()
    [error] = raised
    assert isinstance(error, StoreUnavailable), repr(error)
    code, message = to_status(error)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message.startswith("service unavailable: the index is unavailable (incident ")
    assert index.url is not None and index.url not in message  # the address stays in the log


def test_index_refusals_tell_the_client_what_and_the_log_where(
        caplog: pytest.LogCaptureFixture) -> None:
    for error, code, said in [
        (CollectionMissing("no index at /srv/secret/papers: papersearch ingest creates it"),
         grpc.StatusCode.FAILED_PRECONDITION, "the index has not been created yet"),
        (EmbedderMismatch("index /srv/secret/papers was built by embedder 0123abcd"),
         grpc.StatusCode.FAILED_PRECONDITION, "the index was built by another embedder"),
        (StoreUnavailable("qdrant-edge upsert: /srv/secret/papers: connection reset"),
         grpc.StatusCode.UNAVAILABLE, "service unavailable: the index is unavailable"),
        (StorageExhausted("index volume of /srv/secret/papers has 3.0 MiB free, less than"
                          " index.min_free_mib (64)"),
         grpc.StatusCode.UNAVAILABLE,
         "service unavailable: the index has run out of disk space or file descriptors"),
        # a migration's previous embedder, no longer exported: INTERNAL with a traceback
        (ModelNotFound("no exported version of minilm-l6 in /srv/secret/models"),
         grpc.StatusCode.FAILED_PRECONDITION, "a model the index was built with is missing"),
        (WeightingMismatch("index /srv/secret/papers holds papers whose BM25 weights ..."),
         grpc.StatusCode.FAILED_PRECONDITION, "the index records another BM25 weighting"),
    ]:
        caplog.clear()
        assert to_status(error)[0] == code
        message = to_status(error)[1]
        assert message.startswith(said) and "/srv/secret" not in message
        incident = message.rsplit("incident ", 1)[1].rstrip(")")
        assert any(getattr(r, "incident", None) == incident and "/srv/secret" in r.detail
                   for r in caplog.records)


def test_one_failure_met_by_many_calls_is_one_incident(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collection opener hands every call within its retry interval the one failure it
    met: each call logged it again under a new id (500 lines in 1.7 s of searches). A Qdrant
    server down fails each call with its own error: the same failure within
    INCIDENT_REPEAT_S is the same incident too, logged again after it with the calls that met
    it meanwhile; another failure is its own incident at once."""
    now = [0.0]
    monkeypatch.setattr(gateway_errors, "_incidents",
                        gateway_errors.Incidents(clock=lambda: now[0]))

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "index unavailable"]

    met = StoreUnavailable("qdrant-edge open: /srv/secret/papers: Permission denied")
    told = {to_status(met)[1] for _ in range(50)}
    assert len(told) == 1
    assert len(logged()) == 1 and f"incident {logged()[0].incident})" in told.pop()
    down = "qdrant search: UNAVAILABLE: failed to connect to all addresses"
    now[0] = 5.0
    first = {to_status(StoreUnavailable(down))[1] for _ in range(30)}
    other = to_status(StoreUnavailable("qdrant upsert: INTERNAL: disk full"))[1]
    assert len(first) == 1 and other not in first and len(logged()) == 3
    now[0] = 5.0 + gateway_errors.INCIDENT_REPEAT_S
    later = to_status(StoreUnavailable(down))[1]
    assert later not in first and len(logged()) == 4
    assert logged()[-1].repeats == 29  # type: ignore[attr-defined]


def test_two_bugs_saying_the_same_words_are_two_incidents(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """An INTERNAL incident is logged with its traceback: another bug raising the same words
    elsewhere within INCIDENT_REPEAT_S was told the first one's incident, its own traceback
    never logged. The same bug met again is still one incident."""
    monkeypatch.setattr(gateway_errors, "_incidents", gateway_errors.Incidents())

    def one() -> None:
        raise TypeError("'NoneType' object is not subscriptable")

    def another() -> None:
        raise TypeError("'NoneType' object is not subscriptable")

    told = []
    for bug in (one, another, one):
        try:
            bug()
        except TypeError as error:
            told.append(to_status(error)[1])
    assert told[0] == told[2] != told[1]
    logged = [r for r in caplog.records if r.getMessage() == "internal error"]
    assert [r.exc_info[2].tb_next.tb_frame.f_code.co_name for r in logged  # type: ignore[index,union-attr]
            ] == ["one", "another"]


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

"""Hostile input over a real channel against the real gateway (in-process backend, real
embedded index of the sample corpus): bytes protobuf cannot parse, limits, NFC ids, control
characters, calendar ends. Every such request is INVALID_ARGUMENT naming the field, never
INTERNAL/UNKNOWN, and leaves no traceback in the log."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.factory import open_index
from papersearch.settings import ServeSettings, Settings
from tests.gateway_helpers import LoopThread, Servers
from tests.ports import free_port

pytestmark = pytest.mark.slow

SEARCH = "/papersearch.v1.SearchService/"
INDEX = "/papersearch.v1.IndexService/"
MARK = "MARK"  # stands in a string field; its bytes become invalid UTF-8 on the wire
BAD = b"M\xffR\xfe"  # same length, so every length prefix stays right


@pytest.fixture(scope="module")
def targets(sample_settings: Settings, sample_index: Path, embedder_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    encoder = Encoder(embedder_dir)
    store = open_index(sample_settings, encoder)
    scratch_settings = sample_settings.model_copy(update={"index": sample_settings.index.model_copy(
        update={"data_dir": tmp_path_factory.mktemp("hostile-index")})})
    scratch = open_index(scratch_settings, encoder, create=True)
    loop = LoopThread()
    servers = Servers(loop, sample_settings)
    health_port = free_port()  # main's plaintext health port
    try:
        yield {
            "main": servers.start(LocalBackend(encoder, store, None), health_port=health_port),
            "auth": servers.start(LocalBackend(encoder, store, None), api_keys=[SecretStr("k")]),
            "scratch": servers.start(LocalBackend(encoder, scratch, None)),
            "batch1": servers.start(LocalBackend(encoder, scratch, None), upsert_batch_size=1),
            "health": f"127.0.0.1:{health_port}",
        }
    finally:
        servers.stop()
        loop.close()
        store.close()
        scratch.close()


@pytest.fixture(scope="module")
def channel(targets: dict[str, str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(targets["main"]) as channel:
        yield channel


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.WARNING):
        yield
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()
                or "deserializ" in r.getMessage()]


def call_raw(channel: grpc.Channel, method: str, data: bytes | list[bytes]) -> grpc.RpcError:
    """Send ``data`` (one message, or a stream of them for UpsertPapers) as is; the error."""
    with pytest.raises(grpc.RpcError) as info:
        if isinstance(data, list):
            channel.stream_unary(method)(iter(data), timeout=60)
        else:
            channel.unary_unary(method)(data, timeout=60)
    return info.value


def invalid_argument(error: grpc.RpcError) -> str:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error  # type: ignore[attr-defined]
    return error.details() or ""  # type: ignore[attr-defined,no-any-return]


def with_bad_utf8(message: Message) -> bytes:
    data = message.SerializeToString()
    assert data.count(MARK.encode()) == 1
    return data.replace(MARK.encode(), BAD)


def _filter(**fields: Any) -> pb.Filter:
    return pb.Filter(**fields)


# (method, message with MARK in one string field, the field's name in the error)
UTF8_CASES = [
    ("Search", pb.SearchRequest(query=MARK), "SearchRequest.query"),
    ("Search", pb.SearchRequest(query="q", filter=_filter(published_from=MARK)),
     "SearchRequest.filter.published_from"),
    ("Search", pb.SearchRequest(query="q", filter=_filter(published_to=MARK)),
     "SearchRequest.filter.published_to"),
    ("Search", pb.SearchRequest(query="q", filter=_filter(categories=["cs.CL", MARK])),
     "SearchRequest.filter.categories[1]"),
    ("Search", pb.SearchRequest(query="q", filter=_filter(authors=[MARK])),
     "SearchRequest.filter.authors[0]"),
    ("SimilarPapers", pb.SimilarPapersRequest(paper_id=MARK), "SimilarPapersRequest.paper_id"),
    ("SimilarPapers", pb.SimilarPapersRequest(paper_id="p", filter=_filter(authors=["a", MARK])),
     "SimilarPapersRequest.filter.authors[1]"),
    ("SimilarPapers", pb.SimilarPapersRequest(paper_id="p", filter=_filter(published_to=MARK)),
     "SimilarPapersRequest.filter.published_to"),
    ("GetPaper", pb.GetPaperRequest(paper_id=MARK), "GetPaperRequest.paper_id"),
    ("DeletePapers", pb.DeletePapersRequest(paper_ids=["a", "b", MARK]),
     "DeletePapersRequest.paper_ids[2]"),
]
PAPER_FIELDS = {"paper_id": "Paper.paper_id", "title": "Paper.title",
                "abstract": "Paper.abstract", "authors": "Paper.authors[0]",
                "published": "Paper.published", "categories": "Paper.categories[0]",
                "url": "Paper.url"}
REQUESTS = {"Search": pb.SearchRequest(query="graphs", filter=_filter(authors=["A B"])),
            "SimilarPapers": pb.SimilarPapersRequest(paper_id="p", filter=_filter(authors=["A"])),
            "GetPaper": pb.GetPaperRequest(paper_id="2401.00001"),
            "DeletePapers": pb.DeletePapersRequest(paper_ids=["a", "b"])}


@pytest.mark.parametrize(("method", "message", "field"), UTF8_CASES,
                         ids=[case[2] for case in UTF8_CASES])
def test_invalid_utf8_names_the_field(channel: grpc.Channel, method: str, message: Message,
                                      field: str) -> None:
    prefix = INDEX if method == "DeletePapers" else SEARCH
    details = invalid_argument(call_raw(channel, prefix + method, with_bad_utf8(message)))
    assert details == f"{field}: not valid UTF-8"


@pytest.mark.parametrize("field", list(PAPER_FIELDS))
def test_invalid_utf8_in_an_upsert_stream_names_message_and_field(
    targets: dict[str, str], field: str
) -> None:
    good = pb.Paper(paper_id="fine", title="A fine paper").SerializeToString()
    value: Any = [MARK] if field in ("authors", "categories") else MARK
    bad = with_bad_utf8(pb.Paper(**{"paper_id": "p", "title": "t", field: value}))
    with grpc.insecure_channel(targets["scratch"]) as channel:
        details = invalid_argument(call_raw(channel, INDEX + "UpsertPapers", [good, bad]))
    assert f"message 2 of the stream: {PAPER_FIELDS[field]}: not valid UTF-8" in details


@pytest.mark.parametrize("damage", ["random", "truncated"])
@pytest.mark.parametrize("method", [*REQUESTS, "UpsertPapers"])
def test_bytes_that_are_no_message_are_invalid_argument(
    targets: dict[str, str], method: str, damage: str
) -> None:
    sample = REQUESTS.get(method) or pb.Paper(paper_id="p", title="a title")
    data = sample.SerializeToString()
    data = data[:-1] if damage == "truncated" else random.Random(7).randbytes(64)
    prefix = INDEX if method in ("DeletePapers", "UpsertPapers") else SEARCH
    target = targets["scratch" if method == "UpsertPapers" else "main"]
    with grpc.insecure_channel(target) as channel:
        details = invalid_argument(
            call_raw(channel, prefix + method, [data] if method == "UpsertPapers" else data))
    name = sample.DESCRIPTOR.full_name
    head, _, committed = details.partition("; committed before the failure: ")
    assert head.endswith(f"request is not a valid {name}")
    assert committed.startswith("0 papers") if method == "UpsertPapers" else committed == ""


@pytest.mark.parametrize("port", ["main", "health"])
def test_health_requests_are_decoded_as_the_apis_are(targets: dict[str, str], port: str) -> None:
    """Health needs no key: bytes it could not parse were UNKNOWN in gRPC's words, with an
    ERROR traceback in the log for anyone who sent them (on the plaintext health port too);
    an unknown service's name came back whole (megabytes: the answer itself failed)."""
    with grpc.insecure_channel(targets[port]) as channel:
        for data in (b"\n\x02\xff\xfe", b"\n\x05ab"):  # invalid UTF-8; cut short
            details = invalid_argument(call_raw(channel, "/grpc.health.v1.Health/Check", data))
            assert "HealthCheckRequest" in details  # the field with bad UTF-8, or the type
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="s" * 100_000), timeout=60)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert len(info.value.details()) < 200  # type: ignore[attr-defined]


def test_authentication_comes_before_decoding(targets: dict[str, str]) -> None:
    with grpc.insecure_channel(targets["auth"]) as channel:
        error = call_raw(channel, SEARCH + "Search", b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["Search", "WatchSearch"])
def test_a_caller_without_a_key_is_refused_before_its_request_is_received(
    targets: dict[str, str], method: str,
) -> None:
    """A unary request is received whole before its handler runs: past serve.max_receive_bytes
    gRPC itself answers RESOURCE_EXHAUSTED, so that answer means the gateway took in up to
    that much per stream from a caller without a key. The refusal comes first instead."""
    data = b"\xff" * (ServeSettings().max_receive_bytes + 1)
    with grpc.insecure_channel(targets["auth"]) as channel:
        if method == "Search":
            error = call_raw(channel, SEARCH + method, data)
        else:
            with pytest.raises(grpc.RpcError) as info:
                next(iter(channel.unary_stream(SEARCH + method)(data, timeout=60)))
            error = info.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error  # type: ignore[attr-defined]


def test_a_huge_id_is_refused_without_being_echoed(channel: grpc.Channel) -> None:
    request = pb.GetPaperRequest(paper_id="x" * 1_000_000)
    details = invalid_argument(call_raw(channel, SEARCH + "GetPaper", request.SerializeToString()))
    assert details == "paper_id is 1000000 characters; the limit is 256 bytes in UTF-8"


def test_control_characters_are_refused_escaped(channel: grpc.Channel) -> None:
    request = pb.GetPaperRequest(paper_id="Eve\u202eevE")
    details = invalid_argument(call_raw(channel, SEARCH + "GetPaper", request.SerializeToString()))
    assert "paper_id contains the control character U+202E" in details
    assert "\u202e" not in details


@pytest.mark.parametrize("method", ["Search", "SimilarPapers"])
def test_dates_at_the_ends_of_the_calendar(channel: grpc.Channel, method: str) -> None:
    calendar = pb.Filter(published_from="0001-01-01", published_to="9999-12-31")
    request: Message = (pb.SearchRequest(query="diffusion models", top_k=3, filter=calendar)
                        if method == "Search" else pb.SimilarPapersRequest(paper_id="x"))
    if method == "SimilarPapers":  # any paper of the sample index
        found = pb.SearchResponse.FromString(channel.unary_unary(SEARCH + "Search")(
            pb.SearchRequest(query="diffusion", top_k=1).SerializeToString(), timeout=60))
        request = pb.SimilarPapersRequest(paper_id=found.hits[0].paper.paper_id, top_k=3,
                                          filter=calendar)
    for bounds in (calendar, pb.Filter(published_to="9999-12-31"),
                   pb.Filter(published_from="9999-12-31", published_to="9999-12-31")):
        request.filter.CopyFrom(bounds)  # the sample papers carry no date: no hits, no error
        response = pb.SearchResponse.FromString(
            channel.unary_unary(SEARCH + method)(request.SerializeToString(), timeout=60))
        assert not response.hits  # tests/test_index.py has dated papers at the calendar's ends


def test_two_encodings_of_one_id_are_one_paper(targets: dict[str, str]) -> None:
    composed, decomposed = "caf\u00e9-2024", "cafe\u0301-2024"
    papers = [pb.Paper(paper_id=decomposed, title="Espresso extraction kinetics"),
              pb.Paper(paper_id=composed, title="Espresso extraction kinetics, revised")]
    with grpc.insecure_channel(targets["scratch"]) as channel:
        summary = pb.UpsertSummary.FromString(channel.stream_unary(INDEX + "UpsertPapers")(
            iter([p.SerializeToString() for p in papers]), timeout=60))
        assert (summary.received, summary.upserted) == (2, 1)
        for paper_id in (composed, decomposed):
            got = pb.Paper.FromString(channel.unary_unary(SEARCH + "GetPaper")(
                pb.GetPaperRequest(paper_id=paper_id).SerializeToString(), timeout=60))
            assert (got.paper_id, got.title) == (composed, papers[1].title)
        deleted = pb.DeletePapersResponse.FromString(channel.unary_unary(INDEX + "DeletePapers")(
            pb.DeletePapersRequest(paper_ids=[decomposed, composed]).SerializeToString(),
            timeout=60))
        assert deleted.deleted == 1


@pytest.mark.parametrize("target", ["scratch", "batch1"])
def test_a_bad_stream_message_keeps_the_batches_already_written(
    targets: dict[str, str], target: str
) -> None:
    """Batches written before the bad message stay written, the unfinished batch is dropped,
    and the status says which (what the client resends from)."""
    good = [pb.Paper(paper_id=f"{target}-{i}", title="Tidal energy in straits")
            for i in range(2)]
    stream = [p.SerializeToString() for p in good] + [b"\xff\xff"]
    with grpc.insecure_channel(targets[target]) as channel:
        details = invalid_argument(call_raw(channel, INDEX + "UpsertPapers", stream))
        committed = 2 if target == "batch1" else 0  # batch sizes 1 and 64
        assert details == ("message 3 of the stream: request is not a valid papersearch.v1.Paper"
                           f"; committed before the failure: {committed} papers, the stream's "
                           f"first {committed} messages; resend from message {committed + 1} "
                           "(resending is idempotent)")
        deleted = pb.DeletePapersResponse.FromString(channel.unary_unary(INDEX + "DeletePapers")(
            pb.DeletePapersRequest(paper_ids=[p.paper_id for p in good]).SerializeToString(),
            timeout=60))
    assert deleted.deleted == committed

"""The HTTP/JSON API through real gateways over a real embedded index: the gRPC answers and
statuses as JSON, keys and scopes, malformed bodies, NDJSON upserts, deadlines, draining, and the
OpenAPI document generated from the proto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import SecretStr

from papersearch.api import openapi
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.query import SearchQuery
from papersearch.settings import Settings
from tests.gateway_helpers import Servers, Switchable, scratch_gateways
from tests.ports import free_port

WRITE, READ = "http-write", "http-read"
APP = "https://app.example.org"  # a web origin allowed to call the API (CORS)
PAPERS = [
    Paper(id="http-1", title="Transcoding gRPC to JSON", abstract="A gateway speaks HTTP too.",
          published=date(2024, 3, 1), categories=("cs.NI",)),
    Paper(id="http-2", title="Honeybee acoustics", abstract="Hives buzz before they swarm.",
          published=date(2023, 5, 2), categories=("q-bio.PE",)),
]
SEARCH = "/papersearch.v1.SearchService/Search"
UPSERT = "/papersearch.v1.IndexService/UpsertPapers"


@pytest.fixture(scope="module")
def scratch(sample_settings: Settings, embedder_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, LocalBackend]]:
    with scratch_gateways(sample_settings, Encoder(embedder_dir),
                          tmp_path_factory.mktemp("http-index"), PAPERS) as (servers, backend, _):
        yield servers, backend


@pytest.fixture(scope="module")
def gateway(scratch: tuple[Servers, LocalBackend]) -> tuple[str, str]:
    """(gRPC target, HTTP base URL) of a gateway with a write and a read key."""
    servers, backend = scratch
    port = free_port()
    target = servers.start(backend, http_port=port, api_keys=[SecretStr(WRITE)],
                           read_api_keys=[SecretStr(READ)], http_cors_origins=[APP])
    return target, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def front_over(servicer: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """An HTTP front (started; the caller stops it) over a gRPC server of ``servicer`` alone,
    which is stopped at the end."""
    import grpc

    from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
    from papersearch.gateway.http_api import HttpFront, socket_target
    from papersearch.settings import ServeSettings

    target = socket_target(tmp_path)
    server = grpc.aio.server()
    pb_grpc.add_SearchServiceServicer_to_server(servicer, server)
    server.add_insecure_port(target)
    await server.start()
    front = HttpFront(ServeSettings(http_port=free_port()), target)
    await front.start()
    try:
        yield front
    finally:
        await server.stop(0)


def call(url: str, body: bytes | dict[str, Any] | None = None, *, key: str | None = READ,
         content_type: str = "application/json", method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data, method=method, headers={
        "Content-Type": content_type, **({"x-api-key": key} if key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.slow
def test_search_over_http_matches_grpc(gateway: tuple[str, str]) -> None:
    target, http = gateway
    with SearchClient(target, api_key=READ, timeout_s=60) as client:
        expected = client.search(SearchQuery("gateway speaking json", top_k=2, rerank=False))
    status, body = call(http + SEARCH, {"query": "gateway speaking json", "top_k": 2,
                                        "rerank": False})
    assert status == 200
    assert [h["paper"]["paper_id"] for h in body["hits"]] == [h.paper.id for h in expected.hits]
    first = body["hits"][0]
    assert first["paper"]["paper_id"] == "http-1" and first["paper"]["categories"] == ["cs.NI"]
    assert first["score"] == pytest.approx(expected.hits[0].score, rel=1e-6)
    assert body["reranked"] is False and body["below_min_relevance"] == 0  # defaults written
    # the answer is what the OpenAPI document describes, required fields included
    document = openapi.document()
    Draft202012Validator({**document, "$ref": "#/components/schemas/SearchResponse"}).validate(
        body)
    # lowerCamelCase names and enum numbers parse too (protobuf JSON); filters apply
    status, body = call(http + SEARCH, {"query": "gateway", "topK": 5, "mode": 2, "filter": {
        "published_from": "2024-01-01"}})
    assert status == 200 and [h["paper"]["paper_id"] for h in body["hits"]] == ["http-1"]
    # an optional bool: "feedback": true asks for query feedback, as over gRPC
    with SearchClient(target, api_key=READ, timeout_s=60) as client:
        fed = client.search(SearchQuery("gateway speaking json", top_k=3, rerank=False,
                                        feedback=True))
    status, body = call(http + SEARCH, {"query": "gateway speaking json", "top_k": 3,
                                        "rerank": False, "feedback": True})
    assert status == 200
    assert [h["paper"]["paper_id"] for h in body["hits"]] == [h.paper.id for h in fed.hits]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in fed.hits])
    status, body = call(http + SEARCH, {"query": "q", "feedback": "yes"})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.slow
def test_errors_carry_the_grpc_status(gateway: tuple[str, str]) -> None:
    _, http = gateway
    cases = [
        (SEARCH, {"query": "   "}, 400, "INVALID_ARGUMENT", "query"),
        (SEARCH, {"query": "x", "top_k": 100000}, 400, "INVALID_ARGUMENT", "top_k"),
        (SEARCH, {"query": "x", "colour": "red"}, 400, "INVALID_ARGUMENT", "colour"),
        (SEARCH, {"query": "x", "mode": "MODE_FAST"}, 400, "INVALID_ARGUMENT", "MODE_FAST"),
        ("/papersearch.v1.SearchService/GetPaper", {"paper_id": "nope"}, 404, "NOT_FOUND",
         "nope"),
    ]
    for path, body, code, status, mentioned in cases:
        answer = call(http + path, body)
        assert answer[0] == code and answer[1]["error"]["status"] == status, (body, answer)
        assert mentioned in answer[1]["error"]["message"] and answer[1]["error"]["code"] == code
    assert call(http + SEARCH, b"{not json")[0] == 400
    assert call(http + SEARCH, b"[1, 2]")[1]["error"]["message"].startswith("request: expected")
    assert call(http + SEARCH, {"query": "x"}, content_type="text/plain")[0] == 415
    assert call(http + "/papersearch.v1.SearchService/Nope", {})[1]["error"]["status"] == (
        "NOT_FOUND")
    assert call(http + SEARCH, method="GET")[0] == 405
    with pytest.raises(urllib.error.HTTPError) as not_allowed:  # RFC 9110: a 405 names them
        urllib.request.urlopen(urllib.request.Request(http + SEARCH, method="GET"), timeout=60)
    assert not_allowed.value.code == 405 and not_allowed.value.headers["Allow"] == "POST"
    too_big = call(http + SEARCH, {"query": "x" * (5 * 1024 * 1024)})
    assert too_big[0] == 413 and too_big[1]["error"]["status"] == "RESOURCE_EXHAUSTED"
    longest = openapi.MAX_TIMEOUT_MS  # the OpenAPI document's maximum: accepted, not past it
    for timeout in ("soon", "\u00b2", "0", "10000000000000", str(longest + 1)):  # "²": isdigit
        answer = call(http + SEARCH, {"query": "x"}, headers={"x-timeout-ms": timeout})
        assert answer[0] == 400 and "x-timeout-ms" in answer[1]["error"]["message"], timeout
    assert call(http + SEARCH, {"query": "x"}, headers={"x-timeout-ms": str(longest)})[0] == 200
    huge = call(http + SEARCH, b'{"query": "x", "top_k": ' + b"9" * 5000 + b"}")
    assert huge[0] == 400 and "not valid JSON" in huge[1]["error"]["message"]  # was a 500
    deep = call(http + SEARCH, b"[" * 100_000 + b"]" * 100_000)
    assert deep == (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                    "message": "request body is nested too deeply"}})
    # an error repeats at most 64 characters of a client's value (the proto's promise)
    for body, content_type in (({"query": "x", "mode": "M" * 250}, "application/json"),
                               ({"query": "x", "K" * 250: 1}, "application/json"),
                               ({"query": "x"}, "text/" + "t" * 250)):
        answer = call(http + SEARCH, body, content_type=content_type)
        message = answer[1]["error"]["message"]
        assert answer[0] in (400, 415) and re.search(r"\(25\d characters\)", message), message
        assert not re.search(r"(M|K|t){65}", message), message
    for key in ("\u00e9", "caf\u00e9-key"):  # not a gRPC metadata value: refused, as a key
        answer = call(http + SEARCH, {"query": "x"}, key=key)
        assert answer[0] == 401 and answer[1]["error"]["status"] == "UNAUTHENTICATED", key


@pytest.mark.slow
def test_a_request_grpc_takes_is_taken_over_http_though_its_json_is_longer(
    gateway: tuple[str, str],
) -> None:
    """The body was held to serve.max_receive_bytes in JSON bytes, which gRPC counts in
    protobuf bytes: 10,000 ids of 254 bytes of UTF-8 (2.57 MB of protobuf, 5.07 MB of JSON,
    each character escaped as \\uXXXX) were deleted over gRPC and refused over HTTP with 413."""
    _, http = gateway
    limit = 4 * 1024 * 1024  # serve.max_receive_bytes' default
    delete = http + "/papersearch.v1.IndexService/DeletePapers"
    ids = [f"{i:05d}" + "\u8ad6" * 83 for i in range(10_000)]
    body = json.dumps({"paper_ids": ids}).encode()
    assert pb.DeletePapersRequest(paper_ids=ids).ByteSize() < limit < len(body)
    assert call(delete, body, key=WRITE) == (200, {"deleted": "0"})
    # the limit holds for the message parsed from it: a 413 naming it (the gRPC side's
    # RESOURCE_EXHAUSTED came back as a 429 to retry, or past gRPC's own limit in its words)
    query = "x" * (5 * 1024 * 1024)
    assert call(http + SEARCH, {"query": query}) == (413, {"error": {
        "code": 413, "status": "RESOURCE_EXHAUSTED", "message": "request: its protobuf "
        f"encoding is {pb.SearchRequest(query=query).ByteSize()} bytes, past the server's "
        f"limit of {limit} bytes (serve.max_receive_bytes)"}})
    # and the body to three times it, in bytes of JSON (its Content-Length says so: unread)
    body = b'{"query": "' + b"x" * (3 * limit) + b'"}'
    assert call(http + SEARCH, body) == (413, {"error": {
        "code": 413, "status": "RESOURCE_EXHAUSTED", "message": f"request body of {len(body)} "
        f"bytes (its Content-Length) over the server's limit of {3 * limit} bytes of JSON (3 x "
        f"serve.max_receive_bytes, {limit}, which counts the message's protobuf bytes)"}})


def test_refusals_to_send_again_say_when_and_a_503_lets_its_connection_go() -> None:
    """A 503 (a draining gateway) kept its connection, so a client's next call came back to
    the same gateway; neither a 503 nor a 429 said when to send it again."""
    from papersearch.gateway.http_api import RETRY_AFTER_S, HttpError

    for status, http in (("UNAVAILABLE", 503), ("RESOURCE_EXHAUSTED", 429)):
        response = HttpError(status, "send it again").response()
        assert response.status == http
        assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert (response.keep_alive is False) is (http == 503)
    too_large = HttpError("RESOURCE_EXHAUSTED", "too large", http=413).response()
    assert "Retry-After" not in too_large.headers and too_large.keep_alive is not False


@pytest.mark.parametrize(("body", "named"), [
    ('{"query": "x", "min_relevance": 1' + "0" * 400 + "}", "too large"),
    ('{"query": "x", "mode": 1e999}', "float infinity"),
    ('{"query": "x", "mode": "\\ud800"}', "unpaired surrogate"),
    ('{"query": "x", "filter": {"\\ud800": 1}}', "unpaired surrogate"),
    ('{"query": "x", "\\ud800": 1}', "unpaired surrogate"),
    ('{"query": "x", "top_k": 1' + "1" * 200 + "}", "top_k"),
])
def test_a_body_protobuf_cannot_take_is_invalid_argument(body: str, named: str) -> None:
    """A number out of a float's range, or a lone surrogate where protobuf wants a name, came
    out of its parser as OverflowError or SystemError: a 500 with a traceback in the log (and
    a dropped connection in an NDJSON stream); a 200-digit top_k was repeated whole."""
    from papersearch.gateway.http_api import HttpError, _loads, _parse

    with pytest.raises(HttpError) as raised:
        _parse(_loads(body.encode(), "request"), pb.SearchRequest, "request")
    assert raised.value.status == "INVALID_ARGUMENT" and named in raised.value.message
    assert not re.search(r"\d{65}", raised.value.message), raised.value.message


@pytest.mark.parametrize(("body", "said"), [
    ({"query": "x", "mode": "M\u202eX\nY\x1b[31m"},
     "Invalid enum value 'M\\u202eX\\nY\\x1b[31m' for enum type papersearch.v1.Mode"),
    ({"query": "x", "k\u202e\n": 1}, "has no field named 'k\\u202e\\n' at"),
    ({"query": "x", "filter": {"\x1b[2J" + "K" * 100: 1}},
     "has no field named '\\x1b[2J" + "K" * 60 + "'... (104 characters) at"),
    ({"query": "x", "mode": "\u202e" * 100}, "'" + "\\u202e" * 64 + "'... (100 characters)"),
])
def test_a_parse_error_repeats_a_clients_value_escaped(body: dict[str, Any], said: str) -> None:
    """protobuf's parse errors repeat the offending value or key raw: a bidi override, a
    newline or ANSI escapes went into the error message (and the client's log or terminal)
    as they came. The API's messages repeat a client's value escaped (quoted(), as the gRPC
    side's) and at most 64 characters of it."""
    from papersearch.gateway.http_api import HttpError, _parse

    with pytest.raises(HttpError) as raised:
        _parse(body, pb.SearchRequest, "request")
    message = raised.value.message
    assert raised.value.status == "INVALID_ARGUMENT" and said in message, message
    assert message.isprintable(), message  # no newline, ESC or bidi override left


def test_a_parse_error_looks_for_a_bounded_number_of_the_bodys_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every string of the body was quoted and looked for in the message, the numbers last:
    760,000 short categories beside a 4,299-digit top_k took 8 s of the parse thread."""
    from papersearch.gateway import http_api

    quoted: list[str] = []
    monkeypatch.setattr(http_api, "quoted", lambda text: quoted.append(text) or repr(text))
    body = {"query": "x", "topK": int("9" * 4299),
            "filter": {"categories": [f"\x01{n}" for n in range(20_000)]}}
    with pytest.raises(http_api.HttpError) as raised:
        http_api._parse(body, pb.SearchRequest, "request")
    assert "9" * 65 not in raised.value.message and "(4299 characters)" in raised.value.message
    assert len(quoted) <= 2 * http_api.QUOTED_MAX

    # the value named, not among those looked for, is escaped within the message's limit
    body = {"query": "x", "mode": "\U000e0001" * 999,
            "filter": {"categories": ["A" * 1000 + str(n) for n in range(300)]}}
    with pytest.raises(http_api.HttpError) as raised:
        http_api._parse(body, pb.SearchRequest, "request")
    message = raised.value.message
    assert message.isprintable() and len(message) <= http_api.PARSE_ERROR_CHARS + 80, len(message)


@pytest.mark.parametrize(("message_type", "body", "said"), [
    (pb.DeletePapersRequest, '{"paper_ids": ["dp-1", "dp-2"], "paperIds": ["dp-3"]}',
     "paper_ids is given twice, as 'paper_ids' and 'paperIds'"),
    (pb.SearchRequest, '{"query": "x", "top_k": 5, "topK": 7}',
     "top_k is given twice, as 'top_k' and 'topK'"),
    (pb.SearchRequest, '{"query": "x", "filter": {"publishedFrom": "2025-01-01", '
     '"published_from": "2024-01-01"}}', "filter.published_from is given twice"),
    (pb.SearchRequest, '{"query": "x", "filter": {"published_from": "2025-01-01"}, '
     '"filter": {"categories": ["cs.CV"]}}', "request gives the key 'filter' more than once"),
    (pb.SearchRequest, '{"query": "x", "filter": {"categories": ["a"], "categories": ["b"]}}',
     "request gives the key 'categories' more than once"),
])
def test_a_field_given_twice_is_refused(message_type: Any, body: str, said: str) -> None:
    """json.loads kept the last of a repeated key, and protobuf's ParseDict the last of a
    field's two names: part of the request (ids to delete, a filter's date bound) was
    dropped with a 200. protobuf's own JSON parser refuses a repeated key."""
    from papersearch.gateway.http_api import HttpError, _loads, _parse

    with pytest.raises(HttpError, match=re.escape(said)) as raised:
        _parse(_loads(body.encode(), "request"), message_type, "request")
    assert raised.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("message_type", "body", "said"), [
    (pb.SearchRequest, {"query": "x", "mode": True},
     "mode must be an enum name or number, got the boolean true"),
    (pb.SearchRequest, {"query": "x", "minRelevance": True},
     "min_relevance must be a number, got the boolean true"),
    (pb.SearchRequest, {"query": "x", "filter": ""}, "filter must be a JSON object, got a string"),
    (pb.SearchRequest, {"query": "x", "filter": []}, "filter must be a JSON object, got a list"),
    (pb.SimilarPapersRequest, {"paper_id": "p", "strategy": False},
     "strategy must be an enum name or number, got the boolean false"),
])
def test_json_protobuf_would_read_as_another_value_is_refused(
    message_type: Any, body: dict[str, Any], said: str,
) -> None:
    """protobuf's parser read true as 1 for an enum or a double ("min_relevance": true cut
    every hit) and "" or [] as an empty filter: 200 for a request that was not the message."""
    from papersearch.gateway.http_api import HttpError, _parse

    with pytest.raises(HttpError, match=re.escape(said)) as raised:
        _parse(body, message_type, "request")
    assert raised.value.status == "INVALID_ARGUMENT"
    fine = {"query": "x", "mode": "MODE_DENSE", "minRelevance": 0.2, "filter": None,
            "top_k": 3}
    assert _parse(fine, pb.SearchRequest, "request") == pb.SearchRequest(
        query="x", mode=pb.MODE_DENSE, min_relevance=0.2, top_k=3)


@pytest.mark.parametrize("tail", [b"\x01", b"\r", b" \x00"])
def test_a_header_aiohttp_cannot_parse_is_logged_without_its_value(
        gateway: tuple[str, str], tail: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's parse error quotes the bad header line, and it went into the log whole: a
    key read from a file ending in CR was logged."""
    caplog.set_level(logging.DEBUG, logger="papersearch.gateway.http_api")
    port = int(gateway[1].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST " + SEARCH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"x-api-key: " + WRITE.encode() + tail + b"\r\nContent-Length: 2\r\n\r\n{}")
        assert b" 400 Bad Request" in sock.recv(64)
    refused = [r for r in caplog.records if r.getMessage().startswith("an HTTP request that")]
    assert refused and all(WRITE not in str(r.__dict__) for r in caplog.records)
    assert refused[-1].reason.startswith("400: ")


def test_a_body_without_a_content_type_is_told_it_has_none() -> None:
    """It was told it had sent 'application/octet-stream', aiohttp's default."""
    from aiohttp.test_utils import make_mocked_request

    from papersearch.gateway.http_api import HttpError, _require_type

    for headers, said in (({}, "got none"), ({"Content-Type": "text/plain"}, "got 'text/plain'")):
        with pytest.raises(HttpError, match=f"must be application/json, {said}$") as raised:
            _require_type(make_mocked_request("POST", SEARCH, headers=headers), "application/json")
        assert raised.value.http == 415


def test_headers_are_quoted_as_sent_and_refused_given_twice() -> None:
    """A Content-Type aiohttp cannot parse was told it was 'application/octet-stream' (aiohttp's
    fallback); x-timeout-ms or Content-Encoding given twice took the first silently (a body
    gzipped and said so second was 'not valid JSON'); a 404 named the decoded path, which may
    be one that exists (Search%2FSearch)."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from papersearch.gateway.http_api import HttpError, _call_options, _from_http, _require_type

    listed = make_mocked_request("POST", SEARCH, headers={
        "Content-Type": "application/json, text/plain"})
    with pytest.raises(HttpError, match="got 'application/json, text/plain'$"):
        _require_type(listed, "application/json")
    for name, values in (("Content-Encoding", ("identity", "gzip")),
                         (openapi.TIMEOUT_HEADER, ("1", "60000"))):
        request = make_mocked_request("POST", SEARCH, headers=CIMultiDict(
            [("Content-Type", "application/json"), *((name, value) for value in values)]))
        with pytest.raises(HttpError, match=f"^header {name} given 2 times: give it once$"
                           ) as raised:
            _require_type(request, "application/json")
            _call_options(request, None)
        assert raised.value.http == 400
    encoded = make_mocked_request("POST", "/papersearch.v1.SearchService%2FSearch")
    said = _from_http(web.HTTPNotFound(), encoded, 1).message
    assert said == "no such path: '/papersearch.v1.SearchService%2FSearch'"


def test_a_fault_in_the_http_front_is_a_json_500_with_an_incident() -> None:
    from aiohttp.test_utils import make_mocked_request

    from papersearch.gateway.http_api import _errors_as_json

    async def broken(_: Any) -> Any:
        raise RuntimeError("a bug")

    middleware = _errors_as_json(1024)
    response = asyncio.run(middleware(make_mocked_request("POST", SEARCH), broken))
    body = json.loads(response.body)
    assert response.status == 500 and body["error"]["status"] == "INTERNAL"
    assert body["error"]["message"].startswith("internal error (incident ")


@pytest.mark.slow
def test_keys_and_scopes_are_the_grpc_ones(gateway: tuple[str, str]) -> None:
    _, http = gateway
    delete = http + "/papersearch.v1.IndexService/DeletePapers"
    assert call(http + SEARCH, {"query": "x"}, key=None)[0] == 401
    assert call(http + SEARCH, {"query": "x"}, key="wrong")[0] == 401
    assert call(delete, {"paper_ids": ["none"]}, key=READ)[0] == 403
    assert call(delete, {"paper_ids": ["none"]}, key=WRITE) == (200, {"deleted": "0"})
    # turned away before the body is read and parsed: not a 400 about the body
    assert call(http + SEARCH, b"{not json", key=None)[0] == 401
    assert call(http + UPSERT, b"not json\n", key=READ, content_type=openapi.NDJSON)[0] == 403
    # health and the document need no key
    assert call(http + "/healthz", method="GET", key=None) == (200, {"status": "SERVING"})
    assert call(http + "/readyz", method="GET", key=None) == (200, {"status": "SERVING"})
    assert call(http + "/openapi.json", method="GET", key=None)[1]["openapi"] == "3.1.0"
    # every answer says not to sniff its type, errors and JSON too (only the page's files did)
    for path in ("/openapi.json", "/page/%3Csvg%20onload%3Dalert(1)%3E"):
        try:
            with urllib.request.urlopen(http + path, timeout=30) as answer:
                headers = answer.headers
        except urllib.error.HTTPError as error:
            headers = error.headers
        assert headers["X-Content-Type-Options"] == "nosniff", path


def _head(connection: socket.socket) -> str:
    """The status line and headers of the next answer on ``connection``."""
    head = b""
    while b"\r\n\r\n" not in head and (chunk := connection.recv(1)):
        head += chunk
    return head.decode("latin-1")


@pytest.mark.parametrize(("key", "content_type", "length", "status"), [
    (None, "application/json", 20_000_000, 401),
    (READ, "text/plain", 20_000_000, 415),
    (READ, "application/json", 20_000_000, 413),
    (READ, "application/json", 17, 200),
])
def test_a_body_is_asked_for_only_once_the_checks_passed(
        gateway: tuple[str, str], key: str | None, content_type: str, length: int,
        status: int) -> None:
    """Expect: 100-continue (curl sends it for large uploads) got 100 Continue before the key,
    type or size was checked, and the client uploaded a body then refused unread; a
    Content-Length over the JSON limit was read up to the limit (or waited for, until the
    body timeout) before its 413. Now a refusal comes instead of the 100 (the connection
    closed: the client may send its body or not), and the 100 only to a call that may go on."""
    port = int(gateway[1].rsplit(":", 1)[1])
    headers = (f"POST {SEARCH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {length}\r\nExpect: 100-continue\r\n"
               + (f"x-api-key: {key}\r\n" if key else ""))
    for expect in (True, False):
        request = headers if expect else headers.replace("Expect: 100-continue\r\n", "")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(f"{request}\r\n".encode())
            if status == 200:
                if expect:
                    assert _head(connection).startswith("HTTP/1.1 100 Continue\r\n")
                connection.sendall(b'{"query": "json"}')
            head = _head(connection)
        assert head.startswith(f"HTTP/1.1 {status} "), head
        # unread, a body the client may yet send is framed only by the connection's end
        assert ("Connection: close" in head) is (status != 200 and (expect or status == 413)), head
        assert ('WWW-Authenticate: ApiKey header="x-api-key"' in head) is (status == 401), head
    if status == 200:  # an HTTP/1.0 client's expectation is ignored (RFC 9110): no 417
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(f"{headers.replace('HTTP/1.1', 'HTTP/1.0')}\r\n".encode()
                               + b'{"query": "json"}')
            head = _head(connection)
        assert re.match(r"HTTP/1\.[01] 200 ", head), head


@pytest.mark.slow
def test_a_body_that_stops_arriving_is_refused_in_time(
    scratch: tuple[Servers, LocalBackend],
) -> None:
    """Headers, part of the body, then nothing: the server held the connection and its
    buffer for ever (aiohttp times out idle connections only)."""
    import socket

    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port, http_body_timeout_s=0.5)
    for path, content_type in ((SEARCH, "application/json"), (UPSERT, openapi.NDJSON)):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                               f"{content_type}\r\nContent-Length: 1000\r\n\r\n".encode()
                               + b'{"query": ')
            answer = connection.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "serve.http_body_timeout_s" in answer


def test_the_document_carries_the_protos_conventions() -> None:
    """The proto's header (dates, limits, cleaning, which errors to retry, OUT_OF_RANGE past
    the response limit) sits before no declaration, and the document had none of it."""
    described = openapi.document()["info"]["description"]
    conventions = described.split("\n\nConventions:\n", 1)[1].splitlines()
    assert len(conventions) == 6 and all(line.startswith("- ") for line in conventions)
    for rule in ("retry with backoff", "OUT_OF_RANGE: ask for fewer", "(case-sensitive)",
                 "Dates from 0001-01-01 to 9999-12-31", "Surrounding whitespace is ignored",
                 "at most 64 characters of a client's value"):
        assert rule in described, rule


def _late_body(port: int, headers: str, delay_s: float) -> bytes:
    """The answer to a search whose body follows its headers after ``delay_s``."""
    body = json.dumps({"query": "graph neural networks"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(f"POST {SEARCH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                           f"application/json\r\n{headers}Content-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n".encode())
        time.sleep(delay_s)
        connection.sendall(body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@pytest.mark.slow
def test_x_timeout_ms_counts_from_the_request_and_the_servers_own_limit_is_named(
        scratch: tuple[Servers, LocalBackend], caplog: pytest.LogCaptureFixture) -> None:
    """x-timeout-ms started after the body had arrived and been parsed (1 s answered 200 after
    a 1.5 s upload), where a gRPC deadline counts the transfer; and a search with no header
    was sent serve.default_deadline_s as the caller's own, so a gateway too slow for its own
    limit was neither logged nor named to the caller."""
    servers, backend = scratch
    port = free_port()
    servers.start(Switchable(backend, delay_s=1.0), http_port=port, default_deadline_s=0.3)
    late_body = _late_body(port, "x-timeout-ms: 1000\r\n", 1.5)
    assert late_body.startswith(b"HTTP/1.1 504"), late_body[:300]
    assert b"x-timeout-ms ran out before the request body had been read" in late_body
    # without the header, the server's default counts from the arrival too, and is named
    late_body = _late_body(port, "", 1.0)
    assert late_body.startswith(b"HTTP/1.1 504"), late_body[:300]
    assert b"serve.default_deadline_s ran out before the request body had been read" in late_body

    with caplog.at_level(logging.WARNING, logger="papersearch.gateway.servicers"):
        late = call(f"http://127.0.0.1:{port}" + SEARCH, {"query": "x"})
    assert late[0] == 504, late
    # the front's channel gives the gateway a margin to answer in (at the same instant, it won
    # the race with a bare "Deadline Exceeded"); the time is what was left on arrival
    assert re.fullmatch(r"the server's time limit for this call \(serve\.default_deadline_s, "
                        r"0\.[23]\d* s\) ran out before it finished",
                        late[1]["error"]["message"]), late
    assert [r.setting for r in caplog.records if r.getMessage() == "call deadline"] == [
        "serve.default_deadline_s"]


@pytest.mark.slow
def test_an_upsert_the_deadline_ends_while_its_body_arrives_is_answered_cleanly(
    gateway: tuple[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    """The call's end left gRPC's read of the body waiting; aiohttp, reading the rest of the
    body itself after the answer, failed on it with an ERROR and a traceback ("readany()
    called while another coroutine is already waiting")."""
    import logging
    import socket

    port = int(gateway[1].rpartition(":")[2])
    lines = b'{"paper_id": "stalled-1", "title": "Stalled uploads"}\n'
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"), \
            socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(f"POST {UPSERT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                           f"{openapi.NDJSON}\r\nx-api-key: {WRITE}\r\nx-timeout-ms: 1000\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n".encode()
                           + f"{len(lines):x}\r\n".encode() + lines + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += connection.recv(65536)  # the body stalls; the deadline ends the call
        time.sleep(0.5)  # aiohttp has read on after the answer
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    assert not [r for r in caplog.records if r.name == "aiohttp.server"
                and r.levelno >= logging.ERROR]


@pytest.mark.slow
def test_idle_connections_are_closed_and_unparsable_requests_not_logged_as_errors(
    scratch: tuple[Servers, LocalBackend], caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp kept a connection that sent nothing, or unfinished headers, for an hour (its
    keep-alive default), and logged every request it could not parse at ERROR with a
    traceback: any caller, with no key, could hold connections or fill the log."""
    import logging
    import socket

    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port, http_body_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle, \
            socket.create_connection(("127.0.0.1", port), timeout=30) as unfinished:
        unfinished.sendall(b"POST /papersearch.v1.SearchService/Search HTTP/1.1\r\nHost: x")
        assert idle.recv(1) == b"" and unfinished.recv(1) == b""  # closed by the server
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"), \
            socket.create_connection(("127.0.0.1", port), timeout=30) as bad:
        bad.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n")
        assert b" 400 Bad Request" in bad.recv(65536)
    assert not [r for r in caplog.records if r.name == "aiohttp.server"
                and r.levelno >= logging.ERROR]


@pytest.mark.slow
def test_without_keys_only_loopback_names_are_answered(
    scratch: tuple[Servers, LocalBackend],
) -> None:
    """DNS rebinding: a page the developer visits points its host name at 127.0.0.1, and the
    browser, taking this keyless server (``make run``) for that page's origin, sends it JSON
    POSTs (DeletePapers) with that name in Host; they were answered."""
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port)
    base = f"http://127.0.0.1:{port}"
    delete = "/papersearch.v1.IndexService/DeletePapers"
    status, body = call(base + delete, {"paper_ids": ["http-1"]}, key=None,
                        headers={"Host": f"rebound.example:{port}"})
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    assert "not a loopback name" in body["error"]["message"]
    assert call(base + "/readyz", method="GET", key=None, headers={"Host": "rebound.example"}
                )[0] == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "app.localhost"):
        status, body = call(base + SEARCH, {"query": "gateway", "top_k": 1}, key=None,
                            headers={"Host": host})
        assert status == 200 and body["hits"][0]["paper"]["paper_id"] == "http-1", host  # kept


def test_health_without_its_grpc_server_says_unknown(tmp_path: Path) -> None:
    """/readyz answered a failed hop with an error object (the page showed "not ready
    (undefined)") whose message named the gateway's private unix socket."""
    from aiohttp.test_utils import TestClient, TestServer

    from papersearch.gateway.http_api import HttpFront
    from papersearch.settings import ServeSettings

    socket = tmp_path / "no-such.sock"

    async def probe() -> list[tuple[int, str, str | None]]:
        front = HttpFront(ServeSettings(http_port=free_port()), f"unix:{socket}")
        try:
            async with TestClient(TestServer(front.runner.app)) as client:
                return [(r.status, await r.text(), r.headers.get("Retry-After"))
                        for r in [await client.get(p) for p in ("/readyz", "/healthz")]]
        finally:
            for channel in (front.channel, *front.watch_channels):
                await channel.close()

    document = openapi.document()
    for status, body, retry_after in asyncio.run(probe()):
        assert status == 503 and json.loads(body) == {"status": "UNKNOWN"}
        assert str(socket) not in body
        assert retry_after == "1"  # as the document says of every 503
    assert all("Retry-After" in document["paths"][p]["get"]["responses"]["503"]["headers"]
               for p in ("/readyz", "/healthz"))


def test_ndjson_lines_split_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines of a body that arrives in pieces, line ends at and inside piece edges."""
    from papersearch.gateway import http_api

    pieces = [b'{"a"', b': 1}\n{"b": 2', b"}\n", b"\n", b'{"c": 3}\n{"d"', b": 4}"]

    class Body:
        def __init__(self) -> None:
            self.left = list(pieces)

        async def read(self, _: int) -> bytes:
            return self.left.pop(0) if self.left else b""

    class Request:
        content = Body()

    lines = http_api._Lines(Request(), pb.Paper, 1 << 20, 5.0,  # type: ignore[arg-type]
                            http_api.Parsers())

    async def read() -> list[bytes]:
        return [line async for line in lines._lines()]

    assert asyncio.run(read()) == [b'{"a": 1}', b'{"b": 2}', b"", b'{"c": 3}', b'{"d": 4}']



def test_a_large_answer_is_written_as_json_off_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A search answer near serve.max_send_bytes was turned into JSON on the event loop
    (~150 ms for 16 MB): past PARSE_INLINE_BYTES of protobuf it is written in the front's
    parse thread; a small one stays inline. The body is the same either way."""
    import threading

    from papersearch.gateway import http_api

    where: list[str] = []
    real = http_api._json_body

    def traced(message: Any) -> bytes:
        where.append(threading.current_thread().name)
        return real(message)

    monkeypatch.setattr(http_api, "_json_body", traced)
    small = pb.SearchResponse(hits=[pb.Hit(paper=pb.Paper(paper_id="p", title="t"))])
    large = pb.SearchResponse(hits=[pb.Hit(paper=pb.Paper(paper_id=f"p{i}", abstract="a" * 20_000))
                                    for i in range(10)])
    assert large.ByteSize() > http_api.PARSE_INLINE_BYTES >= small.ByteSize()
    parsers = http_api.Parsers()
    try:
        bodies = [asyncio.run(parsers.json_body(m)) for m in (small, large)]
    finally:
        parsers.close()
    assert where[0] == threading.current_thread().name and where[1].startswith("http-parse")
    assert [json.loads(b)["hits"][0]["paper"]["paper_id"] for b in bodies] == ["p", "p0"]


def test_a_body_of_blank_lines_lets_the_event_loop_run() -> None:
    """Buffered bytes are read without a pause, and blank lines are skipped without one: a
    body of newlines held the loop that also runs gRPC and health (64 MiB gzipped: 27 s)."""
    from papersearch.gateway import http_api

    class Body:
        def __init__(self) -> None:
            self.left = 50

        async def read(self, _: int) -> bytes:  # already buffered: no pause
            self.left -= 1
            return b"\n" * 1024 if self.left >= 0 else b""

    class Request:
        content = Body()

    lines = http_api._Lines(Request(), pb.Paper, 1 << 20, 5.0,  # type: ignore[arg-type]
                            http_api.Parsers())
    turns = [0]

    async def meanwhile() -> None:
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    async def read() -> list[Any]:
        other = asyncio.create_task(meanwhile())
        await asyncio.sleep(0)
        started = turns[0]
        messages = [m async for m in lines.messages()]  # type: ignore[misc]
        other.cancel()
        turns[0] -= started
        return messages

    assert asyncio.run(read()) == [] and lines.error is None
    assert turns[0] >= 50  # a turn for the rest of the loop at every piece of the body


def test_a_malformed_body_is_invalid_argument() -> None:
    """aiohttp's RequestPayloadError (a corrupt chunked body) was a 500 with a traceback for a
    unary call, and cancelled an NDJSON upload without any answer."""
    from aiohttp import web

    from papersearch.gateway import http_api

    class Body:
        async def read(self, *_: int) -> bytes:
            raise web.RequestPayloadError("Not enough data to satisfy transfer length header.")

    class Request:
        content = Body()

        async def read(self) -> bytes:
            return await self.content.read()

    lines = http_api._Lines(Request(), pb.Paper, 1 << 20, 5.0,  # type: ignore[arg-type]
                            http_api.Parsers())

    async def read() -> list[Any]:
        return [m async for m in lines.messages()]  # type: ignore[misc]

    assert asyncio.run(read()) == []
    assert lines.error is not None and lines.error.http == 400
    assert "line 1: the request body is malformed" in str(lines.error)
    front = http_api.HttpFront.__new__(http_api.HttpFront)
    front.serve = Settings().serve
    with pytest.raises(http_api.HttpError, match="the request body is malformed") as raised:
        asyncio.run(front._body(Request()))  # type: ignore[arg-type]
    assert raised.value.http == 400


def test_a_compressed_body_is_refused() -> None:
    """No compressed body is offered: aiohttp inflated one on the event loop (a gzip bomb,
    refused for its missing key, was still inflated while read to its end)."""
    from aiohttp.test_utils import make_mocked_request

    from papersearch.gateway.http_api import HttpError, _require_type

    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with pytest.raises(HttpError, match="Content-Encoding 'gzip' is not accepted") as raised:
        _require_type(make_mocked_request("POST", SEARCH, headers=headers), "application/json")
    assert raised.value.http == 415
    headers["Content-Encoding"] = "identity"
    _require_type(make_mocked_request("POST", SEARCH, headers=headers), "application/json")


def test_an_ndjson_line_past_the_limit_is_refused_where_it_ends_in_one_piece() -> None:
    """Only the unfinished rest of a piece was measured: a long line whose end came in the same
    piece was passed on, and the gRPC channel refused it with its own words (the papers before
    it written, the client not told)."""
    from papersearch.gateway import http_api

    class Body:
        def __init__(self) -> None:  # past 3 x 64 bytes of JSON
            self.left = [b'{"paper_id": "p1"}\n' + b"x" * 200 + b'\n{"paper_id": "p3"}\n']

        async def read(self, _: int) -> bytes:
            return self.left.pop(0) if self.left else b""

    class Request:
        content = Body()

    lines = http_api._Lines(Request(), pb.Paper, 64, 5.0,  # type: ignore[arg-type]
                            http_api.Parsers())

    async def read() -> list[bytes]:
        return [line async for line in lines.messages()]  # type: ignore[misc]

    assert len(asyncio.run(read())) == 1  # the first, then the refusal
    assert lines.error is not None and lines.error.http == 413
    assert ("line 2 is longer than the server's limit of 192 bytes of JSON (3 x "
            "serve.max_receive_bytes, 64, which counts the message's protobuf bytes)"
            in str(lines.error))


def test_an_ndjson_lines_limit_counts_its_message_and_leaves_room_for_json_escapes() -> None:
    """A line was held to serve.max_receive_bytes in JSON bytes, which gRPC counts in protobuf
    bytes: a paper gRPC takes was refused (JSON escapes a character of 2 or 4 UTF-8 bytes
    three times as long). Its JSON may be JSON_BYTES_PER_BYTE times the limit; the message
    parsed from it is held to the limit itself, with a 413 that says so."""
    from papersearch.gateway import http_api
    from papersearch.telemetry import Metrics

    escaped = json.dumps({"paper_id": "p1", "title": "\u00e9" * 20})  # 151 bytes, 46 in protobuf
    assert len(escaped) > 64 and pb.Paper(paper_id="p1", title="\u00e9" * 20).ByteSize() <= 64
    grown = json.dumps({"paper_id": "p2", "title": "x" * 100})  # 131 bytes, 106 in protobuf

    class Body:
        def __init__(self) -> None:
            self.left = [f"{escaped}\n{grown}\n".encode()]

        async def read(self, _: int) -> bytes:
            return self.left.pop(0) if self.left else b""

    class Request:
        content = Body()

    limits: list[str] = []
    lines = http_api._Lines(Request(), pb.Paper, 64, 5.0,  # type: ignore[arg-type]
                            http_api.Parsers())

    async def read() -> list[Any]:
        return [line async for line in lines.messages()]  # type: ignore[misc]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Metrics, "refused", lambda self, limit: limits.append(limit))
        sent = asyncio.run(read())
    assert [message.paper_id for message in sent] == ["p1"]  # the escaped one, then the refusal
    assert lines.error is not None and lines.error.http == 413
    assert lines.error.status == "RESOURCE_EXHAUSTED" and lines.error.message == (
        "line 2: its protobuf encoding is 106 bytes, past the server's limit of 64 bytes "
        "(serve.max_receive_bytes)")
    assert limits == ["serve.max_receive_bytes"]


@pytest.mark.slow
def test_ndjson_upsert_commits_lines_before_a_bad_one(gateway: tuple[str, str]) -> None:
    target, http = gateway
    lines = [json.dumps({"paper_id": f"nd-{i}", "title": f"Streamed paper {i}"})
             for i in range(3)]
    status, body = call(http + UPSERT, "\n".join(lines).encode(), key=WRITE,
                        content_type=openapi.NDJSON)
    assert status == 200 and body["received"] == "3" and body["upserted"] == "3"
    bad = [lines[0], '{"paper_id": "nd-9", "title": 7}', lines[2]]
    status, body = call(http + UPSERT, "\n".join(bad).encode(), key=WRITE,
                        content_type=openapi.NDJSON)
    assert status == 400 and "line 2" in body["error"]["message"]
    assert body["error"]["metadata"] == {"papersearch-committed-messages": "1",
                                         "papersearch-committed": "1"}
    with SearchClient(target, api_key=READ, timeout_s=60) as client:
        assert client.get("nd-2").title == "Streamed paper 2"
    invalid = json.dumps({"paper_id": "", "title": "no id"})
    status, body = call(http + UPSERT, invalid.encode(), key=WRITE, content_type=openapi.NDJSON)
    assert status == 200 and body["skipped"] == "1" and len(body["errors"]) == 1
    # lines count as the body has them, blank ones too; a paper skipped before the bad line is
    # in the error's summary, not reported as committed
    mixed = [lines[0], "", invalid, "", "not json", lines[1]]
    status, body = call(http + UPSERT, "\n".join(mixed).encode(), key=WRITE,
                        content_type=openapi.NDJSON)
    assert status == 400 and body["error"]["message"].startswith("line 5 is not valid JSON")
    assert "the 2 messages before it were sent" in body["error"]["message"]
    assert body["error"]["message"].endswith("resend from line 5")
    assert body["error"]["metadata"] == {"papersearch-committed-messages": "2",
                                         "papersearch-committed": "1"}
    summary = body["error"]["summary"]
    assert (summary["received"], summary["upserted"], summary["skipped"]) == ("2", "1", "1")
    assert "paper 2 (no id)" in summary["errors"][0]
    document = openapi.document()  # the 400 is what the document describes
    error = document["paths"][UPSERT]["post"]["responses"]["400"]["content"]["application/json"]
    Draft202012Validator({**document, **error["schema"]}).validate(body)
    # a key protobuf cannot take (a lone surrogate): the connection was dropped, the line
    # before it lost, and the call counted as one the client left (499)
    surrogate = [json.dumps({"paper_id": "nd-7", "title": "Kept"}), '{"\\ud800": 1}', lines[1]]
    status, body = call(http + UPSERT, "\n".join(surrogate).encode(), key=WRITE,
                        content_type=openapi.NDJSON)
    assert status == 400 and "line 2" in body["error"]["message"], body
    assert body["error"]["metadata"]["papersearch-committed"] == "1"
    with SearchClient(target, api_key=READ, timeout_s=60) as client:
        assert client.get("nd-7").title == "Kept"


@pytest.mark.slow
def test_deadline_and_drain(scratch: tuple[Servers, LocalBackend],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A search still running when the drain's grace ends is answered 503 UNAVAILABLE, as a
    gRPC caller's gets UNAVAILABLE (its connection was dropped with no answer, and counted
    503)."""

    from papersearch.gateway.http_api import CUT, RETRY_AFTER_S
    from papersearch.telemetry import Metrics

    servers, backend = scratch
    port = free_port()
    servers.start(Switchable(backend, delay_s=3.0), http_port=port)
    http = f"http://127.0.0.1:{port}"
    late = call(http + SEARCH, {"query": "x"}, headers={"x-timeout-ms": "100"})
    assert late[0] == 504 and late[1]["error"]["status"] == "DEADLINE_EXCEEDED"
    gateway = servers.gateways[-1]
    recorded: list[tuple[str, int]] = []
    monkeypatch.setattr(Metrics, "http_request", lambda self, method, status, latency_s:
                        recorded.append((method, status)))
    answers: list[Any] = []

    def search() -> None:
        request = urllib.request.Request(http + SEARCH, json.dumps({"query": "x"}).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "x-timeout-ms": "20000"})
        try:
            urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as error:
            answers.append((error.code, error.headers["Retry-After"], json.load(error)))

    def running(calls: int) -> None:
        waited = time.monotonic() + 30
        while gateway.gate.running != calls and time.monotonic() < waited:
            time.sleep(0.01)
        assert gateway.gate.running == calls

    running(0)  # the late one ended
    searching = threading.Thread(target=search)
    searching.start()
    running(1)
    servers.loop.run(gateway.drain(0.2))
    searching.join(30)
    assert answers == [(503, str(RETRY_AFTER_S), {
        "error": {"code": 503, "status": "UNAVAILABLE", "message": CUT}})]
    assert recorded == [("Search", 503)]
    with pytest.raises(urllib.error.URLError):  # stopped: nothing listens any more
        call(http + "/healthz", method="GET")


@pytest.mark.slow
def test_calls_done_within_the_drains_grace_are_answered_as_they_ended(
        scratch: tuple[Servers, LocalBackend]) -> None:
    """The front's stop cancelled every call it still held, though the gRPC side was done: a
    search that ended within the grace was a 503 "cut short", and a watch lost the drain's
    "reconnect, with replay_since"."""
    from papersearch.gateway.watch import DRAINING

    servers, backend = scratch
    port = free_port()
    servers.start(Switchable(backend, delay_s=1.0), http_port=port)
    http = f"http://127.0.0.1:{port}"
    gateway = servers.gateways[-1]
    watch = urllib.request.urlopen(urllib.request.Request(
        http + "/papersearch.v1.SearchService/WatchSearch", json.dumps({"query": "bees"}).encode(),
        headers={"Content-Type": "application/json"}), timeout=60)
    assert json.loads(watch.readline())["caught_up"] is True
    answers: list[tuple[int, Any]] = []
    searching = threading.Thread(target=lambda: answers.append(call(http + SEARCH,
                                                                    {"query": "bees"}, key=None)))
    searching.start()
    waited = time.monotonic() + 30
    while gateway.gate.running < 2 and time.monotonic() < waited:  # the watch and the search
        time.sleep(0.01)
    servers.loop.run(gateway.drain(10.0))
    searching.join(30)
    assert [code for code, _ in answers] == [200]
    last = json.loads([line for line in watch if line.strip()][-1])
    assert last["error"]["status"] == "UNAVAILABLE" and last["error"]["message"] == DRAINING


@pytest.mark.slow
def test_watches_do_not_take_the_streams_other_http_calls_need(
    scratch: tuple[Servers, LocalBackend],
) -> None:
    """Every HTTP call shared one connection to the gRPC server, which takes
    serve.max_concurrent_streams calls per connection: with that many watches open a search
    waited for ever (no deadline) and /readyz timed out."""
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port, max_concurrent_streams=2, watch_max_watches=4)
    http = f"http://127.0.0.1:{port}"
    watches = []
    try:
        for _ in range(4):  # the limit: two connections' worth of watches
            request = urllib.request.Request(
                http + "/papersearch.v1.SearchService/WatchSearch",
                json.dumps({"query": "graph networks"}).encode(),
                headers={"Content-Type": "application/json"})
            watch = urllib.request.urlopen(request, timeout=60)
            assert json.loads(watch.readline())["caught_up"]  # open, and held open
            watches.append(watch)
        assert len(servers.gateways[-1].watches.watches) == 4
        http_front = servers.gateways[-1].http
        assert http_front is not None and http_front.watching == [2, 2]  # least used first
        status, body = call(http + SEARCH, {"query": "graph networks", "top_k": 2}, key=None)
        assert status == 200 and body["hits"]
        assert call(http + "/readyz", method="GET", key=None) == (200, {"status": "SERVING"})
    finally:
        for watch in watches:
            watch.close()


def test_openapi_document_is_valid_and_covers_the_proto() -> None:
    document = openapi.document()
    validate(document)
    methods = {f"/{s.full_name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values()
               for m in s.methods}
    # and the HTTP front's own GETs, which need no key
    probes = {"/healthz", "/readyz", "/openapi.json"}
    assert set(document["paths"]) == methods | probes
    assert all(document["paths"][p]["get"]["security"] == [] for p in probes)
    health = Draft202012Validator({**document, "$ref": "#/components/schemas/HealthStatus"})
    assert health.is_valid({"status": "NOT_SERVING"}) and not health.is_valid({"status": "ok"})
    search = document["paths"][SEARCH]["post"]
    assert "Ranks papers for a free-text query" in search["description"]  # proto comments
    query = document["components"]["schemas"]["SearchRequest"]["properties"]["query"]
    assert query["type"] == "string" and "Required" in query["description"]
    upsert = document["paths"][UPSERT]["post"]["requestBody"]["content"]
    assert list(upsert) == [openapi.NDJSON]
    assert document["components"]["schemas"]["UpsertSummary"]["properties"]["received"][
        "format"] == "int64"
    # what the gateway always writes is required in answers (a generated client typed every
    # field optional); nothing a request holds is (Paper is both)
    schemas = document["components"]["schemas"]
    assert {"hits", "reranked", "below_min_relevance"} <= set(schemas["SearchResponse"][
        "required"])
    assert schemas["Hit"]["required"] == ["score"]  # paper, stages: messages, when set
    assert "required" not in schemas["Paper"] and "required" not in schemas["SearchRequest"]
    # several statuses share an HTTP code: each is named (one overwrote the others)
    errors = search["responses"]
    assert errors["400"]["description"] == "FAILED_PRECONDITION, INVALID_ARGUMENT, OUT_OF_RANGE"
    assert errors["500"]["description"] == "DATA_LOSS, INTERNAL, UNKNOWN"
    assert {"405", "408", "413", "415"} <= set(errors)  # the HTTP front's own
    # the headers sent with them: Retry-After (429, 503), Allow (405)
    assert {code: set(errors[code].get("headers", {})) for code in ("429", "503", "405", "400")
            } == {"429": {"Retry-After"}, "503": {"Retry-After"}, "405": {"Allow"}, "400": set()}
    timeout = document["components"]["parameters"]["timeout"]
    assert timeout["schema"]["maximum"] == openapi.MAX_TIMEOUT_MS
    assert "IndexService call serve.index_call_timeout_s, WatchSearch none" in (
        timeout["description"])


def test_the_document_says_what_an_http_upsert_does_after_a_bad_line() -> None:
    """UpsertPapers' description was only the proto's: a bad message ends the stream and "the
    unfinished batch is not written", and a failed stream "has no summary". Over HTTP a bad
    line ends the gRPC stream normally: every line before it is written, and the 400 carries
    their UpsertSummary (summary) and the committed metadata, which the Error schema left an
    untyped object."""
    document = openapi.document()
    described = document["paths"][UPSERT]["post"]["description"]
    http = described[described.index("Over HTTP: "):]  # after the proto's, of gRPC
    assert "every paper of the lines before it is written, the unfinished batch too" in http
    assert "error object carries summary, the UpsertSummary of those lines" in http
    assert "papersearch-committed and papersearch-committed-messages" in http
    schemas = document["components"]["schemas"]
    assert "Over HTTP" in schemas["UpsertSummary"]["description"]
    assert "Over HTTP" not in document["paths"][SEARCH]["post"]["description"]
    assert set(openapi.HTTP_NOTES) <= set(openapi.comments())  # names the proto has
    error = document["paths"][UPSERT]["post"]["responses"]["400"]["content"]["application/json"]
    validator = Draft202012Validator({**document, **error["schema"]})
    answer = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "line 2 ...",
                        "metadata": {"papersearch-committed": "1",
                                     "papersearch-committed-messages": "1"},
                        "summary": {"received": "1", "upserted": "1", "skipped": "0",
                                    "errors": []}}}
    validator.validate(answer)
    answer["error"]["summary"] = {"received": 1.5, "upserted": "1"}  # not an UpsertSummary
    assert not validator.is_valid(answer)


@pytest.mark.slow
def test_cors_only_for_the_configured_origins(gateway: tuple[str, str]) -> None:
    _, http = gateway

    def answer(method: str, origin: str) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(
            http + SEARCH, b'{"query": "json"}' if method == "POST" else None, method=method,
            headers={"Origin": origin, "Content-Type": "application/json", "x-api-key": READ,
                     "Access-Control-Request-Method": "POST"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    status, headers = answer("OPTIONS", APP)  # the browser's preflight
    assert status == 204 and headers["Access-Control-Allow-Origin"] == APP
    assert "x-api-key" in headers["Access-Control-Allow-Headers"]
    status, headers = answer("POST", APP)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == APP
    # a page reads a 429/503's retry hint only if it is exposed (not a safelisted header)
    assert headers["Access-Control-Expose-Headers"] == "Retry-After, Allow"
    for method in ("OPTIONS", "POST"):  # another site's page gets no CORS headers
        status, headers = answer(method, "https://elsewhere.example.com")
        assert "Access-Control-Allow-Origin" not in headers
    assert status == 200  # (a browser would withhold it from that page)


def test_a_call_its_client_left_is_not_counted_as_a_server_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With handler cancellation a client that goes (its timeout, a watch it closes) cancels
    the handler: the request metric recorded 500 for it, inflating the 5xx rate."""
    from aiohttp.test_utils import make_mocked_request

    from papersearch.gateway import http_api
    from papersearch.telemetry import Metrics

    recorded: list[int] = []
    monkeypatch.setattr(Metrics, "http_request",
                        lambda self, method, status, latency_s: recorded.append(status))

    async def left(_: Any) -> Any:
        raise asyncio.CancelledError

    async def broken(_: Any) -> Any:
        raise RuntimeError("a bug")

    front = cast(Any, SimpleNamespace(stopping=False))
    for handler in (left, broken):
        with pytest.raises((asyncio.CancelledError, RuntimeError)):
            asyncio.run(http_api._measured(SEARCH, handler, front)(
                make_mocked_request("POST", SEARCH)))
    assert recorded == [http_api.CLIENT_CLOSED, 500]


def test_the_fronts_stop_with_a_call_still_running_stays_within_the_drains_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call still running when the drain's grace ended held the front's stop 10 s (aiohttp
    waits its shutdown timeout twice), past what preStop, Serve and the launcher allow after
    the grace (serving/drain.py's MARGIN_S); and its client got no answer, the connection
    dropped (aiohttp cancelled the handler), where a gRPC client gets UNAVAILABLE: now a 503
    to send again elsewhere, as the front's other 503s.

    The front's aiohttp shutdown timeout and the call's deadline are made an hour here, so a
    stop that still waited on the running call could only return after the hang guard failed
    the test: the stop is shown not to be held by the call at all (not timed against a bound
    a loaded machine can miss). The worst case it is held (2 x HTTP_STOP_S) is checked against
    the allowance."""

    import aiohttp

    from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
    from papersearch.gateway import http_api
    from papersearch.gateway.http_api import (
        CUT,
        HTTP_STOP_S,
        RETRY_AFTER_S,
    )
    from papersearch.gateway.server import STOP_GRACE_S
    from papersearch.serving.drain import MARGIN_S, POLL_S

    assert 2 * HTTP_STOP_S + STOP_GRACE_S + POLL_S < MARGIN_S
    monkeypatch.setattr(http_api, "HTTP_STOP_S", 3600.0)  # read as the front is made

    class Hanging(pb_grpc.SearchServiceServicer):
        def __init__(self) -> None:
            self.reached = asyncio.Event()

        async def Search(self, request: Any, context: Any) -> Any:  # noqa: N802
            self.reached.set()
            await asyncio.sleep(3600)

    async def stop_with_a_call_running() -> Any:
        servicer = Hanging()
        async with front_over(servicer, tmp_path) as front, aiohttp.ClientSession() as session:
            call = asyncio.ensure_future(session.post(
                f"http://{front.address}{SEARCH}", json={"query": "x"},
                headers={openapi.TIMEOUT_HEADER: str(3600 * 1000)}))
            await asyncio.wait_for(servicer.reached.wait(), 60)  # it reached the servicer
            await asyncio.wait_for(front.stop(), 60)  # a hang guard: not held the hour
            response = await asyncio.wait_for(call, 60)  # answered before the connection closed
            headers = {name: response.headers.get(name)
                       for name in ("Retry-After", "Connection")}
            return response.status, headers, await response.json()

    answer = asyncio.run(stop_with_a_call_running())
    assert answer == (503, {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}, {
        "error": {"code": 503, "status": "UNAVAILABLE", "message": CUT}})


def test_a_watch_the_fronts_stop_cuts_ends_with_an_error_line(tmp_path: Path) -> None:
    """A watch still open when the front stopped (a drain's grace over) had its body cut off
    mid-stream (aiohttp cancelled the handler); now it ends as a watch's other errors do, with
    a last line saying UNAVAILABLE."""
    import aiohttp

    from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
    from papersearch.gateway.http_api import CUT

    class OneMatch(pb_grpc.SearchServiceServicer):
        async def WatchSearch(self, request: Any, context: Any) -> Any:  # noqa: N802
            yield pb.WatchEvent(caught_up=True)
            await asyncio.sleep(60)

    async def cut_watch() -> list[Any]:
        async with front_over(OneMatch(), tmp_path) as front, aiohttp.ClientSession() as session:
            watch = await session.post(
                f"http://{front.address}/papersearch.v1.SearchService/WatchSearch",
                json={"query": "x"})
            first = json.loads(await watch.content.readline())
            stopping = asyncio.ensure_future(front.stop())
            rest = [json.loads(line) for line in (await watch.read()).splitlines()]
            await stopping
            return [watch.status, first["caught_up"], *rest]

    assert asyncio.run(cut_watch()) == [200, True, {"error": {
        "code": 503, "status": "UNAVAILABLE", "message": CUT}}]


def test_a_watchs_connection_is_probed_when_silent(tmp_path: Path) -> None:
    """A watch without matches sends nothing: a client gone without a FIN (asleep, its NAT
    entry dropped) held its watch for the kernel's keepalive default, over two hours."""
    import socket

    import aiohttp
    import grpc

    from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
    from papersearch.gateway.http_api import TCP_KEEPALIVE_PROBES, HttpFront, socket_target
    from papersearch.settings import ServeSettings

    class Quiet(pb_grpc.SearchServiceServicer):
        async def WatchSearch(self, request: Any, context: Any) -> Any:  # noqa: N802
            await asyncio.sleep(60)
            yield pb.WatchEvent()

    async def watch_options() -> list[int]:
        target = socket_target(tmp_path)
        server = grpc.aio.server()
        pb_grpc.add_SearchServiceServicer_to_server(Quiet(), server)
        server.add_insecure_port(target)
        await server.start()
        front = HttpFront(ServeSettings(http_port=free_port(), keepalive_time_s=45,
                                        keepalive_timeout_s=10), target)
        await front.start()
        try:
            async with aiohttp.ClientSession() as session:
                watch = asyncio.ensure_future(session.post(
                    f"http://{front.address}/papersearch.v1.SearchService/WatchSearch",
                    json={"query": {"query": "x"}}))
                await asyncio.sleep(0.5)  # the watch is open, with nothing to send
                [handler] = front.runner.server.connections  # type: ignore[union-attr]
                sock = handler.transport.get_extra_info("socket")  # type: ignore[union-attr]
                options = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                           *(sock.getsockopt(socket.IPPROTO_TCP, option) for option in (
                               socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))]
                watch.cancel()
                return options
        finally:
            await front.stop()
            await server.stop(0)

    # probed after 45 s of silence, every 4 s (10 s over 3 probes), dropped after 3 unanswered
    assert asyncio.run(watch_options()) == [1, 45, 4, TCP_KEEPALIVE_PROBES]


def test_calls_a_drain_cut_and_streams_ended_by_an_error_count_as_what_the_client_got(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler the front's stop cancelled (the drain's grace over) was counted 499, "the
    client went", though the server cut it; a watch that ended with an error line (drained,
    its deadline) was counted 200, the status sent before its first line."""
    import grpc
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from papersearch.gateway import http_api
    from papersearch.telemetry import Metrics

    recorded: list[int] = []
    monkeypatch.setattr(Metrics, "http_request",
                        lambda self, method, status, latency_s: recorded.append(status))

    async def cut(_: Any) -> Any:
        raise asyncio.CancelledError

    class Expiring:  # a watch's gRPC call: one match, then its deadline
        def __init__(self) -> None:
            self.sent = [pb.WatchEvent()]

        async def read(self) -> Any:
            if self.sent:
                return self.sent.pop()
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details="deadline exceeded")

        def cancel(self) -> None:
            pass

    async def ended(request: web.Request) -> web.StreamResponse:
        return await http_api._lines_out(request, Expiring(), 5.0, lambda: None)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(http_api._measured(SEARCH, cut, cast(Any, SimpleNamespace(stopping=True)))(
            make_mocked_request("POST", SEARCH)))
    asyncio.run(http_api._measured(SEARCH, ended, cast(Any, SimpleNamespace(stopping=False)))(
        make_mocked_request("POST", SEARCH)))
    assert recorded == [503, 504]


@pytest.mark.slow
def test_a_large_body_is_parsed_off_the_event_loop(
    scratch: tuple[Servers, LocalBackend], gateway: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """protobuf's JSON parser is Python: a 4 MiB body of short names held the gateway's event
    loop (every other call, the health checks) for ~0.9 s. A body past 64 KiB is parsed in a
    worker thread, with the same answers; a small one still on the loop."""
    from google.protobuf import json_format

    servers, _ = scratch
    _, http = gateway
    parsed_in: list[threading.Thread] = []
    parse = json_format.ParseDict

    def recording(*args: Any, **kwargs: Any) -> Any:
        parsed_in.append(threading.current_thread())
        return parse(*args, **kwargs)

    monkeypatch.setattr(json_format, "ParseDict", recording)
    assert call(http + SEARCH, {"query": "honeybee acoustics"})[0] == 200
    padded = {"query": "honeybee acoustics", "filter": {"authors": ["a"] * 40_000}}
    answer = call(http + SEARCH, padded)
    assert answer[0] == 400 and "authors has 40000 entries" in answer[1]["error"]["message"]
    deep = call(http + SEARCH, b"[" * 100_000 + b"]" * 100_000)
    assert deep[1]["error"]["message"] == "request body is nested too deeply"
    assert [thread is servers.loop.thread for thread in parsed_in] == [True, False]


def test_an_http_stream_to_a_client_that_stopped_reading_ends_at_its_last_line_too() -> None:
    """Each line's write was bounded, but the end of the body (write_eof, which waits for the
    client to take what is buffered) was not: a watch that ended while its client had
    stopped reading held the handler, the gRPC call and its place until the client left."""
    import socket

    import grpc
    from aiohttp import web

    from papersearch.gateway.http_api import _lines_out

    ended = asyncio.Event()

    class StallingClientCall:  # a watch that ends once the client stops reading
        def __init__(self, request: web.Request) -> None:
            self.request, self.cancelled = request, False

        async def read(self) -> Any:
            await asyncio.sleep(0)
            if self.request.protocol is not None and self.request.protocol._paused:
                return grpc.aio.EOF
            return pb.WatchEvent(hit=pb.Hit(paper=pb.Paper(paper_id="p", title="t",
                                                           abstract="x" * 1000)))

        def cancel(self) -> None:
            self.cancelled = True

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await _lines_out(request, StallingClientCall(request), 0.5, lambda: None)
        finally:
            ended.set()

    async def run() -> bool:
        app = web.Application()
        app.router.add_post("/watch", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"POST /watch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        try:  # and never read
            await asyncio.wait_for(ended.wait(), 30)
            return True
        except TimeoutError:
            return False
        finally:
            reader.close()
            await runner.cleanup()

    assert asyncio.run(run())  # let go, not held until the client left


def test_large_bodies_are_parsed_a_few_at_a_time_and_refused_past_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every large body was parsed in the default executor at once: protobuf's parser holds
    the GIL (8 bodies of 3.4 MiB stalled the event loop 268 ms), the parses queued behind the
    index's opens, and one whose client had gone went on. Now PARSE_THREADS run, PARSE_WAITING
    wait, another is refused at once (counted in papersearch_refused), and a waiting one whose
    caller left is never run."""
    from papersearch.gateway.http_api import PARSE_THREADS, PARSE_WAITING, HttpError, Parsers
    from papersearch.telemetry import Metrics

    limits: list[str] = []
    monkeypatch.setattr(Metrics, "refused", lambda self, limit: limits.append(limit))

    release, ran = threading.Event(), []

    def parse(name: str) -> Any:
        def run() -> Any:
            release.wait(10)
            ran.append(name)
            return name
        return run

    async def flood() -> tuple[list[Any], HttpError]:
        parsers = Parsers()
        try:
            held = [asyncio.ensure_future(parsers.run(parse(f"p{i}")))
                    for i in range(PARSE_THREADS + PARSE_WAITING)]
            await asyncio.sleep(0.05)
            with pytest.raises(HttpError) as refused:
                await parsers.run(parse("one too many"))
            held[-1].cancel()  # its caller went away while it waited
            await asyncio.sleep(0.05)
            release.set()
            return await asyncio.gather(*held, return_exceptions=True), refused.value
        finally:
            parsers.close()

    answers, refused = asyncio.run(flood())
    assert refused.status == "RESOURCE_EXHAUSTED" and refused.http == 429
    assert answers[:-1] == [f"p{i}" for i in range(PARSE_THREADS + PARSE_WAITING - 1)]
    assert isinstance(answers[-1], asyncio.CancelledError)
    assert sorted(ran) == answers[:-1]  # the cancelled one never ran
    assert limits == ["http_parse_queue"]

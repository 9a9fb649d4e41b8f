"""The clients' retry policy: the service config they ship, and gRPC applying it against a tiny
server that answers UNAVAILABLE before it answers OK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.cli import main
from papersearch.client import AsyncSearchClient, SearchClient
from papersearch.client_retry import channel_options, service_config
from papersearch.pipeline.query import SearchQuery
from tests.ports import free_port


def test_options_hold_the_policy_for_the_reads_only() -> None:
    options = dict(channel_options())
    assert options["grpc.enable_retries"] == 1
    config = json.loads(str(options["grpc.service_config"]))
    assert config == service_config()
    (method_config,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert names == {
        ("papersearch.v1.SearchService", "Search"),
        ("papersearch.v1.SearchService", "SimilarPapers"),
        ("papersearch.v1.SearchService", "GetPaper"),
        ("grpc.health.v1.Health", "Check"),
    }
    assert not any(service == "papersearch.v1.IndexService" for service, _ in names)
    policy = method_config["retryPolicy"]
    assert policy["maxAttempts"] == 3 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert (policy["initialBackoff"], policy["maxBackoff"]) == ("0.1s", "1s")
    assert policy["backoffMultiplier"] == 2
    assert "waitForReady" not in method_config  # by default a read fails fast when unreachable
    assert [k for k, _ in channel_options(retry=False)] == [
        "grpc.max_receive_message_length", "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms",
        "grpc.http2.max_pings_without_data"]  # no policy, the pings and the size still
    (waiting,) = service_config(wait_for_ready=True)["methodConfig"]
    assert waiting["waitForReady"] is True and waiting["retryPolicy"] == policy


def test_wait_for_ready_rides_through_a_gateway_restart() -> None:
    """Nothing listens on the port for a second (a gateway restarting): a client that waits for
    ready gets its answer once a server is there; one that does not fails at once."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    with SearchClient(target, timeout_s=10) as client, pytest.raises(grpc.RpcError) as refused:
        client.search(QUERY)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchServiceServicer_to_server(FlakySearch(), server)

    def start_later() -> None:
        time.sleep(1.0)
        server.add_insecure_port(target)
        server.start()

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        with SearchClient(target, timeout_s=20, wait_for_ready=True) as client:
            assert client.search(QUERY).hits == ()
    finally:
        starter.join()
        server.stop(None)


class FlakySearch(pb_grpc.SearchServiceServicer):
    """Answers UNAVAILABLE to the first ``failures`` Search calls, then OK."""

    def __init__(self) -> None:
        self.failures = 0
        self.calls = 0
        self.lock = threading.Lock()

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> (  # noqa: N802
        pb.SearchResponse
    ):
        with self.lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica died")
        return pb.SearchResponse()

    def arm(self, failures: int) -> None:
        with self.lock:
            self.failures, self.calls = failures, 0


QUERY = SearchQuery("graph neural networks")


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[str, FlakySearch]]:
    servicer = FlakySearch()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_sync_client_retries_unavailable(flaky: tuple[str, FlakySearch]) -> None:
    target, servicer = flaky
    with SearchClient(target, timeout_s=10) as client:
        servicer.arm(failures=1)
        assert client.search(QUERY).hits == ()
        assert servicer.calls == 2
        servicer.arm(failures=3)  # more than the 3 attempts allow
        with pytest.raises(grpc.RpcError) as raised:
            client.search(QUERY)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 3
    with SearchClient(target, timeout_s=10, retry=False) as client:
        servicer.arm(failures=1)
        with pytest.raises(grpc.RpcError) as raised:
            client.search(QUERY)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 1


def test_async_client_retries_unavailable(flaky: tuple[str, FlakySearch]) -> None:
    target, servicer = flaky

    async def search(retry: bool) -> grpc.StatusCode:
        async with AsyncSearchClient(target, timeout_s=10, retry=retry) as client:
            try:
                await client.search(QUERY)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    servicer.arm(failures=1)
    assert asyncio.run(search(retry=True)) == grpc.StatusCode.OK and servicer.calls == 2
    servicer.arm(failures=1)
    assert asyncio.run(search(retry=False)) == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1


def test_cli_search_retry_flag(flaky: tuple[str, FlakySearch],
                               capsys: pytest.CaptureFixture[str]) -> None:
    target, servicer = flaky
    servicer.arm(failures=1)
    assert main(["search", "graph neural networks", "--target", target, "--json"]) == 0
    assert servicer.calls == 2
    servicer.arm(failures=1)
    assert main(["search", "graph neural networks", "--target", target, "--no-retry"]) == 2
    assert capsys.readouterr().err.startswith(f"papersearch: error: {target}: UNAVAILABLE: ")


class QuietWatch(pb_grpc.SearchServiceServicer):
    """A watch that catches up, then hears nothing."""

    def WatchSearch(self, request: pb.WatchSearchRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.WatchEvent]:
        yield pb.WatchEvent(caught_up=True)
        while context.is_active():
            time.sleep(0.1)


class FrozenRelay:
    """A TCP relay to ``port`` that, once frozen, forwards nothing and closes nothing: a host
    gone without a FIN or a RST."""

    def __init__(self, port: int) -> None:
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.frozen.is_set():
                    return  # dropped, and the sockets stay open
                sink.sendall(data)


def test_a_quiet_watch_learns_that_its_gateway_vanished() -> None:
    """Without keepalive pings a watch on a gateway gone without closing its connection waited
    silently for ever (`papersearch watch --reconnect` never reconnected); the client's
    channels ping, with a ping timeout of their own (gRPC's is a minute otherwise), and the
    watch ends UNAVAILABLE. Short intervals here; the clients' default is 30 s + 10 s."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SearchServiceServicer_to_server(QuietWatch(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    relay = FrozenRelay(port)
    options = channel_options(keepalive_s=1.0, keepalive_timeout_s=1.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", options) as channel:
            watch = pb_grpc.SearchServiceStub(channel).WatchSearch(
                pb.WatchSearchRequest(query="q"), timeout=60)
            assert next(watch).caught_up
            relay.frozen.set()
            with pytest.raises(grpc.RpcError) as ended:
                next(watch)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # not the 60 s deadline
    finally:
        server.stop(0)


class LargeAnswers(pb_grpc.SearchServiceServicer):
    """Answers each Search with ``hits`` papers of a 60 KB abstract each (~5 MiB in all)."""

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> (  # noqa: N802
        pb.SearchResponse
    ):
        paper = pb.Paper(paper_id="p", title="t", abstract="\u6587" * 20_000)  # 60 KB UTF-8
        return pb.SearchResponse(hits=[pb.Hit(paper=paper, score=1.0) for _ in range(90)])


def test_the_clients_take_answers_up_to_the_gateways_own_limit() -> None:
    """An answer past gRPC's default 4 MiB (the gateway sends up to serve.max_send_bytes, 16
    MiB) failed in the clients and the CLI with RESOURCE_EXHAUSTED, which a retry repeats."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchServiceServicer_to_server(LargeAnswers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with SearchClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            assert len(client.search(QUERY).hits) == 90

        async def searched() -> int:
            async with AsyncSearchClient(f"127.0.0.1:{port}", timeout_s=30) as client:
                return len((await client.search(QUERY)).hits)

        assert asyncio.run(searched()) == 90
    finally:
        server.stop(None)

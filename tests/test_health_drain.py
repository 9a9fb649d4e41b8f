"""Liveness vs readiness, readiness recovering after an outage, the collection never created by
serving, replica loss as UNAVAILABLE with one retry, and draining: through real gateways over
a real embedded index."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import ReplicaUnavailableError

from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.errors import NotReady
from papersearch.gateway.errors import to_status
from papersearch.gateway.server import Gateway
from papersearch.index.edge import EdgeStore
from papersearch.index.errors import CollectionMissing, PaperNotFound
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.query import SearchQuery
from papersearch.pipeline.serve_backend import call, read
from papersearch.retriever.opener import CollectionOpener
from papersearch.serving.drain import accepting, request_drain
from papersearch.settings import ServeSettings, Settings
from tests.gateway_helpers import DRAIN_GRACE_S, LoopThread, Switchable, scratch_gateways
from tests.ports import free_port

PAPERS = [Paper(id=f"drain-{i}", title=f"Draining gateways {i}",
                abstract="Calls in flight finish while new ones are refused.") for i in range(3)]


@pytest.fixture(scope="module")
def scratch(sample_settings: Settings, embedder_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, LocalBackend]]:
    with scratch_gateways(sample_settings, Encoder(embedder_dir),
                          tmp_path_factory.mktemp("drain-index"), PAPERS) as (servers, backend, _):
        yield servers, backend


def wait_for(client: SearchClient, service: str, wanted: str, within_s: float = 15.0) -> str:
    deadline = time.monotonic() + within_s
    while (status := client.health(service)) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


# --- health ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_liveness_holds_through_an_outage_and_readiness_recovers(
    scratch: tuple[Any, LocalBackend], caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the outage the reason is logged once, not at every health poll (17,280 lines a
    day at the default poll)."""
    servers, backend = scratch
    switchable = Switchable(backend)
    with SearchClient(servers.start(switchable), timeout_s=30.0) as client:
        assert wait_for(client, "readiness", "SERVING") == "SERVING"
        switchable.down = True
        for service in ("", "readiness", "papersearch.v1.SearchService"):
            assert wait_for(client, service, "NOT_SERVING") == "NOT_SERVING", service
        assert client.health("liveness") == "SERVING"  # an outage never restarts gateways
        polled = switchable.polls + 3
        deadline = time.monotonic() + 30  # a hang guard
        while switchable.polls < polled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert switchable.polls >= polled
        said = [r for r in caplog.records if r.getMessage() == "backend not ready"]
        assert len(said) == 1 and "index not reachable" in said[0].reason
        switchable.down = False  # the index is back: no restart needed
        assert wait_for(client, "", "SERVING") == "SERVING"
        assert client.search(SearchQuery("draining gateways", rerank=False)).hits


@pytest.mark.slow
def test_serving_never_creates_the_collection(
    sample_settings: Settings, embedder_dir: Path, tmp_path: Path,
) -> None:
    encoder = Encoder(embedder_dir)
    settings = sample_settings.model_copy(update={"index": sample_settings.index.model_copy(
        update={"data_dir": tmp_path / "index"})})
    now = [0.0]
    opener = CollectionOpener(settings, encoder.dim, encoder.sha256, retry_s=1.0,
                              clock=lambda: now[0])
    with pytest.raises(CollectionMissing):
        opener.open()
    assert not (tmp_path / "index").exists()  # a read created nothing
    # Within retry_s the last error is repeated without asking the engine again.
    another = EdgeStore(settings.index)
    another.ensure_collection(encoder.dim, encoder.sha256, create=True)  # ingestion creates
    with pytest.raises(CollectionMissing):
        opener.open()
    another.close()
    now[0] = 1.5
    store = opener.open()  # found once it exists
    assert store.probe() == 0
    opener.close()


@pytest.mark.slow
def test_a_collection_deleted_while_open_is_missing(
    sample_settings: Settings, embedder_dir: Path, tmp_path: Path,
) -> None:
    encoder = Encoder(embedder_dir)
    index = sample_settings.index.model_copy(update={"data_dir": tmp_path})
    store = EdgeStore(index)
    store.ensure_collection(encoder.dim, encoder.sha256, create=True)
    try:
        (store.path / "edge_config.json").unlink()  # a wiped volume, as seen from the shard
        with pytest.raises(CollectionMissing):
            store.probe()
    finally:
        store.close()


# --- replica loss ----------------------------------------------------------------------------


class Response:
    """Stands in for a DeploymentResponse: what awaiting it raises or returns."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.cancelled = False

    def __await__(self) -> Any:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome
        yield  # a generator: awaitable

    def cancel(self) -> None:
        self.cancelled = True


@pytest.mark.parametrize("lost", [ActorDiedError(), ReplicaUnavailableError("r1")],
                         ids=["actor-died", "replica-unavailable"])
def test_a_lost_replica_is_unavailable_never_internal(lost: Exception) -> None:
    with pytest.raises(NotReady) as info:
        asyncio.run(call("QueryEncoder", Response(lost)))  # type: ignore[arg-type]
    code, message = to_status(info.value)
    assert code == grpc.StatusCode.UNAVAILABLE and "replica lost" in message


def test_a_deployment_that_failed_to_deploy_is_said_plainly(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's DeploymentUnavailableError has no message of its own: callers were told
    "service unavailable: Deployment(name='QueryEncoder', app='papersearch')". Its reason is
    logged once per deployment, not at every call and health poll; a read is not sent again
    (no replica would take it). A call that then succeeds ends it: the next failure is logged
    again, and one deployment's successes do not hide another's failures."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    from papersearch.pipeline import serve_backend

    monkeypatch.setattr(serve_backend, "_unavailable", {})
    caplog.set_level(logging.INFO, logger=serve_backend.log.name)
    failed = DeploymentUnavailableError(DeploymentID(name="QueryEncoder", app_name="papersearch"))
    with pytest.raises(NotReady) as info:
        asyncio.run(call("QueryEncoder", Response(failed)))  # type: ignore[arg-type]
    code, message = to_status(info.value)
    assert code == grpc.StatusCode.UNAVAILABLE and "Deployment(" not in message
    assert message == ("service unavailable: a model deployment has no replica running (it "
                       "failed to deploy)")
    sent: list[Response] = []

    def again() -> Any:
        sent.append(Response(failed))
        return sent[-1]

    for _ in range(3):
        with pytest.raises(NotReady):
            asyncio.run(read("QueryEncoder", again))
        assert asyncio.run(call("Reranker", Response("scores"))) == "scores"
    assert len(sent) == 3  # each read sent once

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage() in ("deployment unavailable", "deployment available")]

    assert said() == ["deployment unavailable"]  # four calls, one reason
    assert asyncio.run(call("QueryEncoder", Response("vectors"))) == "vectors"
    with pytest.raises(NotReady):
        asyncio.run(call("QueryEncoder", Response(failed)))  # type: ignore[arg-type]
    assert said() == ["deployment unavailable", "deployment available",
                      "deployment unavailable"]


def test_a_read_is_sent_once_more_after_a_lost_replica() -> None:
    sent: list[Response] = []

    def send(*outcomes: Any) -> Any:
        def next_response() -> Response:
            sent.append(Response(outcomes[len(sent)]))
            return sent[-1]
        return next_response

    assert asyncio.run(read("QueryEncoder", send(ActorDiedError(), "answer"))) == "answer"
    sent.clear()
    with pytest.raises(NotReady):  # once only: a second loss is the caller's UNAVAILABLE
        asyncio.run(read("QueryEncoder", send(ActorDiedError(), ActorDiedError(), "late")))
    assert len(sent) == 2


# --- deadlines and draining ------------------------------------------------------------------


def test_a_deadline_the_server_set_is_logged_and_the_clients_own_is_not(
        caplog: pytest.LogCaptureFixture) -> None:
    """A search past serve.default_deadline_s (the client set none) left no trace in the
    log: the service too slow for its own limit, unseen."""
    from papersearch.gateway.servicers import within_deadline

    class Context:
        def __init__(self, remaining: float | None, metadata: tuple[tuple[str, str], ...] = (),
                     peer: str = "unix:") -> None:
            self.remaining = remaining
            self.metadata = metadata
            self.address = peer

        def time_remaining(self) -> float | None:
            return self.remaining

        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return self.metadata

        def peer(self) -> str:
            return self.address

    serve = ServeSettings(default_deadline_s=0.05, max_deadline_s=0.1)
    # the HTTP front's call for a request without x-timeout-ms: serve.default_deadline_s from
    # the request's arrival, and the gateway told that it is its own
    from papersearch.gateway.servicers import (
        DEFAULT_DEADLINE_KEY,
        DEFAULT_DEADLINE_MARGIN_S,
        call_time,
    )
    flagged = ((DEFAULT_DEADLINE_KEY, "1"),)
    limit, setting = call_time(Context(0.04 + DEFAULT_DEADLINE_MARGIN_S, flagged),  # type: ignore[arg-type]
                               serve)
    assert limit == pytest.approx(0.04) and setting == "serve.default_deadline_s"
    # the mark only ever shortens a call to the server's default: no way past max_deadline_s
    assert call_time(Context(1e6, flagged), serve) == (0.05, "serve.default_deadline_s")  # type: ignore[arg-type]
    # and is the front's alone: a client's own deadline does not read as the server's
    assert call_time(Context(0.04, flagged, "ipv4:127.0.0.1:5000"), serve) == (0.04, None)  # type: ignore[arg-type]
    for remaining in (None, 0.05, 1e6):  # none, the client's own, one past max_deadline_s
        caplog.clear()
        with pytest.raises(TimeoutError) as raised:
            asyncio.run(within_deadline(asyncio.sleep(3600), Context(remaining),  # type: ignore[arg-type]
                                        serve))
        said = [r.setting for r in caplog.records if r.getMessage() == "call deadline"]
        assert said == {None: ["serve.default_deadline_s"], 0.05: [],
                        1e6: ["serve.max_deadline_s"]}[remaining]
        # the client is told which limit cut it: one past max_deadline_s had read "deadline
        # exceeded" with no word of the server's own limit
        code, message = to_status(raised.value)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert message == {
            None: "the server's time limit for this call (serve.default_deadline_s, 0.05 s) "
                  "ran out before it finished",
            0.05: "deadline exceeded before the call finished",
            1e6: "the server's time limit for this call (serve.max_deadline_s, 0.1 s) ran out "
                 "before it finished"}[remaining]


def test_a_timeout_of_the_work_itself_is_not_read_as_the_servers_limit(
        caplog: pytest.LogCaptureFixture) -> None:
    """Only the call's own limit running out is the server's deadline: a timeout the work
    raised by itself (a stage's own limit) keeps its status and is not logged as one."""
    from papersearch.gateway.servicers import within_deadline

    class Context:
        def time_remaining(self) -> None:
            return None

    async def times_out() -> None:
        raise TimeoutError("the stage's own")

    with pytest.raises(TimeoutError, match="the stage's own"):
        asyncio.run(within_deadline(times_out(), Context(), ServeSettings()))  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.getMessage() == "call deadline"]


def test_drain_must_outlast_the_longest_deadline() -> None:
    with pytest.raises(ValueError, match="drain_grace_s"):
        ServeSettings(max_deadline_s=30, drain_grace_s=30)
    with pytest.raises(ValueError, match="max_deadline_s"):
        ServeSettings(default_deadline_s=60, max_deadline_s=30)


@pytest.mark.slow
def test_a_client_deadline_is_cut_to_max_deadline(scratch: tuple[Any, LocalBackend]) -> None:
    servers, backend = scratch
    slow = Switchable(backend)
    slow.delay_s = 5.0
    with SearchClient(servers.start(slow, max_deadline_s=0.3), timeout_s=60.0) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.search(SearchQuery("draining gateways", rerank=False))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


@pytest.mark.slow
def test_health_watch_streams_are_bounded(scratch: tuple[Any, LocalBackend]) -> None:
    """Health needs no key and a Watch stays open until its client leaves: past
    serve.health_max_watches a new one is RESOURCE_EXHAUSTED, Check still answers, and a
    closed stream frees its place."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    servers, backend = scratch
    target = servers.start(backend, health_max_watches=2)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="liveness")
        open_ = [stub.Watch(request, timeout=30) for _ in range(2)]
        assert [next(w).status for w in open_] == [health_pb2.HealthCheckResponse.SERVING] * 2
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Watch(request, timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "serve.health_max_watches" in refused.value.details()  # type: ignore[attr-defined]
        assert stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        open_.pop().cancel()
        deadline = time.monotonic() + 10
        while True:  # the server sees the cancel a moment later
            again = stub.Watch(request, timeout=30)
            try:
                assert next(again).status == health_pb2.HealthCheckResponse.SERVING
                open_.append(again)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for watch in open_:
            watch.cancel()


def test_a_health_watcher_that_never_takes_its_update_holds_no_status_change() -> None:
    """A Watch whose write never completes (its client grants no flow-control window) leaves
    setting statuses, and the other watchers, free: grpc_health's own servicer wrote while it
    held the lock every set() takes, and one such client froze readiness and every drain."""
    from grpc_health.v1 import health_pb2

    from papersearch.gateway.health import Health

    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)

    class Stream:
        def __init__(self, stalled: bool) -> None:
            self.stalled, self.sent = stalled, list[int]()

        async def write(self, response: health_pb2.HealthCheckResponse) -> None:
            self.sent.append(response.status)
            if self.stalled:
                await asyncio.Event().wait()

    async def go() -> tuple[Stream, Stream, dict[str, int]]:
        health = Health(max_watches=4)
        await health.set("readiness", serving)
        request = health_pb2.HealthCheckRequest(service="readiness")
        stalled, reading = Stream(stalled=True), Stream(stalled=False)
        watches = [asyncio.create_task(health.Watch(request, stream))  # type: ignore[arg-type]
                   for stream in (stalled, reading)]
        await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            await health.set("readiness", not_serving)
            await health.set("readiness", serving)
            await health.enter_graceful_shutdown()
        await asyncio.sleep(0.01)
        listed = await health.List(health_pb2.HealthListRequest(), None)  # type: ignore[arg-type]
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        assert health.watching == 0
        return stalled, reading, {name: s.status for name, s in listed.statuses.items()}

    stalled, reading, listed = asyncio.run(go())
    assert stalled.sent == [serving]
    assert reading.sent[0] == serving and reading.sent[-1] == not_serving  # the latest status
    assert listed == {"readiness": not_serving}


@pytest.mark.slow
def test_a_health_client_granting_no_window_cannot_freeze_readiness_or_a_drain(
    scratch: tuple[Any, LocalBackend],
) -> None:
    """A raw HTTP/2 client opens Watch(readiness) with a stream window of 0 and reads nothing;
    the backend goes down: readiness still turns NOT_SERVING, and a drain still finishes."""
    import h2.config
    import h2.connection
    import h2.settings
    from grpc_health.v1 import health_pb2

    servers, backend = scratch
    switchable = Switchable(backend)
    target = servers.start(switchable)
    gateway = servers.gateways[-1]
    host, port = target.rsplit(":", 1)
    with SearchClient(target, timeout_s=10.0) as client, \
            socket.create_connection((host, int(port)), timeout=5) as raw:
        assert wait_for(client, "readiness", "SERVING") == "SERVING"
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        h2c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        stream = h2c.get_next_available_stream_id()
        h2c.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                  (":path", "/grpc.health.v1.Health/Watch"),
                                  (":authority", target), ("content-type", "application/grpc"),
                                  ("te", "trailers")])
        body = health_pb2.HealthCheckRequest(service="readiness").SerializeToString()
        h2c.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
        raw.sendall(h2c.data_to_send())
        deadline = time.monotonic() + 10
        while gateway.health.watching == 0:  # the server has the stream: never read from here
            assert time.monotonic() < deadline
            time.sleep(0.05)
        switchable.down = True
        assert wait_for(client, "readiness", "NOT_SERVING") == "NOT_SERVING"
        servers.loop.run(gateway.drain(0.5), timeout=30.0)


@pytest.mark.slow
def test_a_second_gateway_on_a_taken_port_is_refused(scratch: tuple[Any, LocalBackend]) -> None:
    """gRPC's SO_REUSEPORT let a second gateway (another `papersearch serve`) bind the port too,
    and the kernel split clients between the two: now the second one fails to start."""
    servers, backend = scratch
    port = int(servers.start(backend).rsplit(":", 1)[1])
    with pytest.raises(OSError, match=rf"cannot bind the gRPC gateway to 127.0.0.1:{port} "
                                      r"\(Failed to bind"):
        servers.start(backend, grpc_port=port)


@pytest.mark.slow
def test_a_drain_asked_for_while_the_gateway_starts_undoes_all_of_the_start(
    scratch: tuple[Any, LocalBackend],
) -> None:
    """Serve may stop a replica moments after making it: a drain that began while start() was
    still running had cancelled only the tasks that existed then, so the readiness poller
    started afterwards ran on (readiness SERVING again) and the server could be stopped before
    it had started."""
    from grpc_health.v1 import health_pb2

    servers, backend = scratch
    settings = servers.base.model_copy(update={"serve": servers.base.serve.model_copy(update={
        "grpc_host": "127.0.0.1", "grpc_port": free_port(), "http_port": None,
        "health_poll_s": 0.05})})

    async def start_and_drain() -> tuple[Gateway, list[asyncio.Task[None]]]:
        gateway = Gateway(backend, settings)
        starting = asyncio.create_task(gateway.start())
        await asyncio.sleep(0)  # the start is under way
        await gateway.drain(0.5)
        await starting
        await asyncio.sleep(0.2)  # a poller left running would have set readiness by now
        return gateway, [t for t in gateway._tasks if not t.done()]

    gateway, running = servers.loop.run(start_and_drain())
    assert running == []
    statuses = gateway.health._statuses
    assert statuses["readiness"] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert statuses["liveness"] == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.slow
def test_drain_finishes_calls_in_flight_and_refuses_new_ones(
    scratch: tuple[Any, LocalBackend], tmp_path: Path,
) -> None:
    servers, backend = scratch
    slow = Switchable(backend)
    health_port, drain_file = free_port(), tmp_path / "drain"
    drain_file.touch()  # stale, from an earlier drain: removed at start, not obeyed
    target = servers.start(slow, health_port=health_port, drain_file=drain_file,
                           drain_grace_s=DRAIN_GRACE_S)
    gateway = servers.gateways[-1]
    serve = gateway.settings.serve
    with SearchClient(target, timeout_s=30.0) as client, \
            SearchClient(f"127.0.0.1:{health_port}", timeout_s=5.0) as probe:
        assert wait_for(probe, "readiness", "SERVING") == "SERVING"
        assert not drain_file.exists()
        slow.delay_s = 1.5
        with ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(client.search, SearchQuery("draining gateways",
                                                                rerank=False))
                         for _ in range(3)]
            deadline = time.monotonic() + 10.0
            while gateway.gate.running < 3:  # the three are in the gateway, 1.5 s each
                assert time.monotonic() < deadline, f"{gateway.gate.running} of 3 in flight"
                time.sleep(0.01)
            drained = pool.submit(request_drain, serve)  # what Kubernetes' preStop runs
            assert wait_for(probe, "readiness", "NOT_SERVING", 5.0) == "NOT_SERVING"
            assert probe.health("liveness") == "SERVING"
            assert client.health("liveness") == "SERVING"  # the main port answers probes too
            with pytest.raises(grpc.RpcError) as refused:
                client.search(SearchQuery("draining gateways", rerank=False), timeout_s=5.0)
            assert [f.result(30).hits for f in in_flight]  # every one answered OK
            # stopped once they had (DRAIN_GRACE_S is past this guard), not by the grace
            assert drained.result(60) is not None
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "draining" in refused.value.details()  # type: ignore[attr-defined]
    assert not accepting("127.0.0.1", int(target.rsplit(":", 1)[1]))


@pytest.mark.slow
def test_clients_calling_on_through_a_drain_are_refused_never_cancelled(
    scratch: tuple[Any, LocalBackend], tmp_path: Path,
) -> None:
    """32 clients that call on into the drain: the server stopped as soon as the calls in
    flight were done, and the refused clients' retries (their channels resend an UNAVAILABLE
    read at once) reached it as it stopped: 5 to 11 of ~170 calls a drain ended CANCELLED
    (which no client retries), 3 drains out of 3. Now the gate refuses until they stop
    coming, a quiet spent with the loop stalled not counting (seen under load); a call sent
    after the stop finds no server (UNAVAILABLE, nothing done)."""
    servers, backend = scratch
    slow = Switchable(backend)
    target = servers.start(slow, drain_file=tmp_path / "drain", drain_grace_s=DRAIN_GRACE_S)
    gateway = servers.gateways[-1]
    outcomes: list[str] = []
    calling_until = [time.monotonic() + 60.0]

    def call_on(client: SearchClient) -> None:
        while time.monotonic() < calling_until[0]:
            try:
                client.search(SearchQuery("draining gateways", rerank=False))
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append(f"{error.code().name}: {error.details()}")  # type: ignore[attr-defined]
            time.sleep(0.02)

    with SearchClient(target, timeout_s=30.0) as client:
        assert wait_for(client, "readiness", "SERVING") == "SERVING"
        slow.delay_s = 0.3
        with ThreadPoolExecutor(33) as pool:
            callers = [pool.submit(call_on, client) for _ in range(32)]
            time.sleep(1.0)
            drained = pool.submit(request_drain, gateway.settings.serve)
            refused_by = time.monotonic() + 30.0  # the drain file is polled: late under load
            while (not any("draining" in outcome for outcome in outcomes)
                   and time.monotonic() < refused_by):
                time.sleep(0.05)
            calling_until[0] = time.monotonic() + 0.5  # within the quiet wait's limit
            assert drained.result(60) is not None
            for caller in callers:
                caller.result(60)
    failed = [outcome for outcome in outcomes if outcome != "OK"]
    assert "OK" in outcomes and failed, outcomes  # calls were answered, and refused
    unexpected = {outcome for outcome in failed if not outcome.startswith("UNAVAILABLE: ")
                  or not ("draining" in outcome or "failed to connect" in outcome)}
    assert not unexpected, unexpected


@pytest.mark.slow
def test_a_drain_ends_an_upsert_stream_saying_what_it_committed(
    scratch: tuple[Any, LocalBackend],
) -> None:
    """An UpsertPapers stream still open when the drain's grace ended was cut by the server's
    stop: UNAVAILABLE "Cancelling all calls", with no committed count (papers were stored).
    Now the stream ends at the drain after its batch in progress, UNAVAILABLE with the
    trailer, and the batch not yet written is left to be sent again.

    The grace is past the wait's timeout (a hang guard) and the client holds its stream open
    until the drain returns, so only the stream ending at the drain can end the drain in time."""
    from papersearch.client import committed_messages_of, committed_of

    servers, backend = scratch
    target = servers.start(backend, upsert_batch_size=2)
    gateway = servers.gateways[-1]
    papers = [Paper(id=f"drained-{i}", title=f"Drained paper {i}", abstract="Cut at a drain.")
              for i in range(5)]
    held = threading.Event()

    def slow() -> Iterator[Paper]:
        yield from papers  # two batches written, the fifth paper pending
        held.wait()  # the client goes on sending, once the drain has returned

    def stored(paper_id: str) -> bool:
        try:
            servers.loop.run(backend.get(paper_id), timeout=30)
        except PaperNotFound:
            return False
        return True

    with SearchClient(target, timeout_s=60.0) as client, ThreadPoolExecutor(1) as pool:
        try:
            upload = pool.submit(client.upsert, slow())
            deadline = time.monotonic() + 30
            while not stored("drained-3"):  # the second batch written
                assert time.monotonic() < deadline, "the first four papers were not written"
                time.sleep(0.05)
            servers.loop.run(gateway.drain(DRAIN_GRACE_S), timeout=60)  # not the grace
            with pytest.raises(grpc.RpcError) as ended:
                upload.result(30)
        finally:
            held.set()
    error = ended.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "draining" in error.details()  # type: ignore[attr-defined]
    assert (committed_of(error), committed_messages_of(error)) == (4, 4)
    assert [stored(p.id) for p in papers] == [True, True, True, True, False]


@pytest.mark.slow
def test_drain_stops_the_readiness_watcher_whenever_it_lands(
    scratch: tuple[Any, LocalBackend],
) -> None:
    """The drain cancels the readiness watcher, here at each loop step of its first check in
    turn: asyncio.wait_for (Python 3.11) dropped a cancel that landed as the check finished, and
    the drain then waited for the watcher forever."""
    servers, backend = scratch
    serve = servers.base.serve.model_copy(update={"grpc_host": "127.0.0.1"})

    async def drain_after(steps: int) -> bool:
        settings = servers.base.model_copy(update={"serve": serve.model_copy(
            update={"grpc_port": free_port()})})
        gateway = Gateway(Switchable(backend), settings)
        await gateway.start()
        for _ in range(steps):
            await asyncio.sleep(0)
        drained = asyncio.ensure_future(gateway.drain(0.05))
        finished, _ = await asyncio.wait([drained], timeout=5.0)
        if not finished:  # the watcher ignored its cancel: stop it for good, report the hang
            for task in gateway._tasks:
                task.cancel()
            await asyncio.wait([drained], timeout=5.0)
        return bool(finished)

    hung = [steps for steps in range(8) if not servers.loop.run(drain_after(steps))]
    assert hung == []


def test_drain_without_a_drain_file_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="drain_file"):
        request_drain(ServeSettings())


def test_a_listener_too_busy_to_answer_still_counts_as_accepting() -> None:
    """Its backlog full, a busy gateway's port drops a connect unanswered: `drain` took that
    for no gateway and skipped the drain."""
    overflow = Path("/proc/sys/net/ipv4/tcp_abort_on_overflow")
    if overflow.exists() and overflow.read_text().strip() != "0":
        pytest.skip("this kernel refuses (resets) a connect past a full backlog")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(4)]
        try:
            for client in queued:  # more than the backlog holds, never accepted
                client.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    client.connect(("127.0.0.1", port))
            assert accepting("127.0.0.1", port)
        finally:
            for client in queued:
                client.close()
    assert not accepting("127.0.0.1", port)  # closed: refused


@pytest.fixture
def temp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of the test's own for the gateways' socket folders (short: a unix
    socket's path has at most 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stub_gateway_settings(http_port: int) -> Settings:
    base = Settings()
    return base.model_copy(update={"serve": base.serve.model_copy(update={
        "grpc_host": "127.0.0.1", "grpc_port": free_port(), "http_port": http_port,
        "health_poll_s": 0.2})})


def stub_backend() -> Any:
    backend = mock.MagicMock()
    backend.ready = mock.AsyncMock(return_value=True)
    return backend


@pytest.mark.parametrize("port", ["http_port", "health_port"])
def test_a_start_that_fails_stops_its_grpc_server_and_removes_its_socket_folder(
    temp_root: Path, port: str,
) -> None:
    """The HTTP port taken, start() raised with the gRPC server it had started still listening
    (liveness SERVING) and its socket folder left in the temporary directory; the health port
    taken, before the gRPC server started, its port stayed bound and accepting."""
    from grpc_health.v1 import health_pb2

    loop = LoopThread()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            settings = stub_gateway_settings(taken.getsockname()[1] if port == "http_port"
                                             else free_port())
            if port == "health_port":
                settings.serve.health_port = taken.getsockname()[1]

            async def start() -> Gateway:
                gateway = Gateway(stub_backend(), settings)
                with pytest.raises(OSError, match="address already in use|cannot bind"):
                    await gateway.start()
                return gateway

            gateway = loop.run(start())
        assert list(temp_root.iterdir()) == []
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", settings.serve.grpc_port)) != 0
        assert gateway.health._statuses.get("liveness", health_pb2.HealthCheckResponse.NOT_SERVING
                                            ) == health_pb2.HealthCheckResponse.NOT_SERVING
        loop.run(gateway.drain(0.1))  # a drain after it (Serve stopping the replica) still ends
    finally:
        loop.close()


def test_a_call_reaching_the_gate_behind_the_drains_own_check_begins_the_wait_again(
    temp_root: Path,
) -> None:
    """Under load gRPC held calls it had taken for hundreds of ms before the gate saw them, so
    the quiet wait ended and the stop cancelled them (CANCELLED). The drain's own health check
    over the private socket is handed over after such calls: one that reached the gate while
    the check was on its way begins the wait again; none, and the drain goes on."""
    loop = LoopThread()
    waits: list[float] = []

    class Refused(Exception):
        pass

    class Context:
        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise Refused(code)

    async def answered(request: Any, context: Any) -> None:
        return None

    async def scenario() -> None:
        settings = stub_gateway_settings(free_port())
        settings.serve.http_port = None  # the private socket is there without HTTP too
        gateway = Gateway(stub_backend(), settings)
        await gateway.start()
        wait_quiet = gateway.gate.wait_quiet

        async def held_back() -> None:  # a call gRPC handed over only now
            with contextlib.suppress(Refused):
                await gateway.gate._gated(answered)(None, Context())

        async def counted(quiet_s: float, limit_s: float) -> None:
            waits.append(limit_s)
            await wait_quiet(quiet_s, limit_s)
            if len(waits) == 1:  # arrives as the check goes out
                asyncio.get_running_loop().call_soon(asyncio.ensure_future, held_back())

        gateway.gate.wait_quiet = counted  # type: ignore[method-assign]
        await gateway.drain(30.0)

    try:
        loop.run(scenario())
    finally:
        loop.close()
    assert len(waits) == 2 and waits[1] < waits[0] <= 2.0, waits  # within the quiet's limit


def test_without_http_a_temporary_directory_too_long_for_a_socket_only_turns_the_check_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The private socket's path has at most 107 bytes: without HTTP (its only other user) a
    long TMPDIR turns the drain's own check off instead of failing the start."""
    long = tmp_path / ("t" * 110)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    loop = LoopThread()
    settings = stub_gateway_settings(free_port())
    settings.serve.http_port = None

    async def scenario() -> Path | None:
        gateway = Gateway(stub_backend(), settings)
        await gateway.start()
        folder = gateway._socket_dir
        await gateway.drain(5.0)
        return folder

    try:
        assert loop.run(scenario()) is None
    finally:
        loop.close()
    assert list(long.iterdir()) == []


def stale_socket_folder(root: Path, name: str, *, age_s: float, listening: bool = False,
                        sock: bool = True) -> tuple[Path, socket.socket | None]:
    """A gateway's socket folder: its socket bound and closed (the process gone), or still
    ``listening``; folder and socket ``age_s`` old."""
    folder = root / f"papersearch-gateway-{name}"
    folder.mkdir()
    server = None
    if sock:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(folder / "grpc.sock"))
        if listening:
            server.listen()
        else:
            server.close()
            server = None
    then = time.time() - age_s
    for path in (folder / "grpc.sock", folder):
        if path.exists():
            os.utime(path, (then, then), follow_symlinks=False)
    return folder, server


def test_a_gateway_start_removes_socket_folders_that_gone_gateways_left(
    temp_root: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway that never drained (ray.shutdown kills replicas) left its socket folder in the
    temporary directory for good. A later start removes those nothing listens on, once they are
    a minute old: never a live gateway's, nor one starting at the same moment."""
    stale, _ = stale_socket_folder(temp_root, "stale", age_s=3600)
    fresh, _ = stale_socket_folder(temp_root, "fresh", age_s=0)  # may not listen yet
    unbound, _ = stale_socket_folder(temp_root, "nosock", age_s=3600, sock=False)
    live, listener = stale_socket_folder(temp_root, "live", age_s=3600, listening=True)
    assert listener is not None
    other = temp_root / "unrelated"
    other.mkdir()
    loop = LoopThread()
    try:
        async def start() -> Gateway:
            gateway = Gateway(stub_backend(), stub_gateway_settings(free_port()))
            await gateway.start()
            return gateway

        with caplog.at_level(logging.INFO, logger="papersearch.gateway.server"):
            gateway = loop.run(start())
        assert not stale.exists()
        assert fresh.exists() and unbound.exists() and live.exists() and other.exists()
        assert [getattr(r, "path", None) for r in caplog.records
                if r.getMessage() == "stale gateway socket folder removed"] == [str(stale)]
        (own,) = set(temp_root.glob("papersearch-gateway-*")) - {fresh, unbound, live}
        loop.run(gateway.drain(0.1))
        assert not own.exists()
    finally:
        listener.close()
        loop.close()


def test_drain_with_no_gateway_says_so_and_leaves_no_file(tmp_path: Path) -> None:
    """It reported "gateway drained in 0.0 s" and left the drain file behind."""
    drain_file = tmp_path / "drain"
    serve = ServeSettings(grpc_host="127.0.0.1", grpc_port=free_port(), drain_file=drain_file)
    assert request_drain(serve) is None
    assert not drain_file.exists()


@pytest.mark.slow
def test_drain_is_shared_by_concurrent_callers(scratch: tuple[Any, LocalBackend]) -> None:
    servers, backend = scratch
    target = servers.start(Switchable(backend))
    gateway = servers.gateways[-1]

    async def twice() -> None:
        await asyncio.gather(gateway.drain(1.0), gateway.drain(1.0))

    servers.loop.run(twice(), timeout=10.0)  # the second waits on the first, no error
    assert gateway.draining
    assert not accepting("127.0.0.1", int(target.rsplit(":", 1)[1]))

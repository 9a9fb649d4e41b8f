"""Saved searches (WatchSearch) through real gateways over a real embedded index: matches arrive
as papers are upserted (within 1 s, nothing else), replay since a date, filters, invalid
requests, the watch limit, draining, a slow watcher, and the HTTP NDJSON mapping."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from papersearch.api.convert import WatchQuery
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.client import AsyncSearchClient, AsyncWatching, SearchClient, WatchEvent, Watching
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.gateway import servicers
from papersearch.gateway import watch as watch_module
from papersearch.gateway.watch import (
    STEP_PAIRS,
    STEP_WAKES,
    FilterRule,
    Match,
    WatchFeed,
    WatchHub,
)
from papersearch.index.query import SearchFilter
from papersearch.index.store import Indexed, now_ms
from papersearch.pipeline.backend import LocalBackend
from papersearch.settings import Settings
from papersearch.telemetry import Metrics
from tests.gateway_helpers import DRAIN_GRACE_S, Servers, scratch_gateways
from tests.module_stand_in import ModuleStandIn
from tests.ports import free_port

QUERY = "graph neural networks for predicting molecular properties"
OLD = [  # indexed before any watch starts
    Paper(id="old-gnn-2021", title="Message passing neural networks for molecules",
          abstract="Graph neural networks predict quantum chemical properties of molecules.",
          published=date(2021, 3, 1), categories=("cs.LG",)),
    Paper(id="old-gnn-2024", title="Equivariant graph networks for molecular property "
          "prediction", abstract="Graph neural networks on 3D molecular graphs.",
          published=date(2024, 6, 1), categories=("cs.LG",)),
    Paper(id="old-bread", title="Sourdough fermentation", abstract="Wild yeast and bread.",
          published=date(2024, 7, 1), categories=("food",)),
]
MATCHING = [
    Paper(id="new-gnn-1", title="Graph neural networks for molecular property prediction",
          abstract="We predict solubility and toxicity of molecules with message passing graph "
                   "neural networks.", published=date(2025, 1, 2), categories=("cs.LG",)),
    Paper(id="new-gnn-2", title="Learning molecular properties with graph networks",
          abstract="A graph neural network over atoms and bonds predicts molecular energies.",
          published=date(2025, 1, 3), categories=("q-bio.BM",)),
]
TOPICS = ["sourdough bread baking", "the offside rule in football", "medieval castle "
          "architecture", "tax law for small businesses", "growing tomatoes in a greenhouse",
          "repairing a car's brake pads", "jazz saxophone improvisation", "travel tips for "
          "Lisbon", "knitting wool sweaters", "volcanic eruptions in Iceland"]


def last_match(tag: str) -> Paper:
    """A paper every watch of QUERY here matches, written after the rest: a watcher gets its
    matches in the order the feed finds them, and the feed finds papers in the order they
    were written (a poll's in the order of their stamps), so once it arrives, whatever the
    papers before it brought has arrived too (no sleep guessing when that is). Published in
    2020 and in cs.LG: no replay since 2024, nor the q-bio.BM filter, brings it back."""
    return Paper(id=f"last-gnn-{tag}", title="Graph neural networks for molecular property "
                 "prediction", abstract="Message passing graph neural networks predict the "
                 "properties of molecules.", published=date(2020, 1, 1), categories=("cs.LG",))


def unrelated(i: int) -> Paper:
    topic = TOPICS[i % len(TOPICS)]
    return Paper(id=f"noise-{i}", title=f"A practical guide to {topic}, part {i}",
                 abstract=f"This article is about {topic}: history, practice and advice.",
                 published=date(2025, 1, 1), categories=("misc",))


class Collector:
    """Reads a watch in a thread, timestamping each event."""

    def __init__(self, watching: Watching) -> None:
        self.watching = watching
        self.events: list[tuple[float, WatchEvent]] = []
        self.error: grpc.RpcError | None = None
        self.caught_up = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.watching:
                self.events.append((time.monotonic(), event))
                if event.caught_up:
                    self.caught_up.set()
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.caught_up.set()

    def ids(self, replayed: bool | None = None) -> list[str]:
        return [e.hit.paper.id for _, e in self.events if e.hit is not None
                and (replayed is None or e.replayed == replayed)]

    def wait_for(self, paper_id: str, within_s: float = 60.0) -> None:
        """Until ``paper_id`` arrives; past ``within_s`` (a hang guard) the test fails."""
        deadline = time.monotonic() + within_s
        while paper_id not in self.ids():
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"{paper_id} never came, only {self.ids()}"
            time.sleep(0.01)

    def stop(self) -> None:
        self.watching.cancel()
        self.thread.join(10)


@pytest.fixture(scope="module")
def scratch(sample_settings: Settings, embedder_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, LocalBackend]]:
    with scratch_gateways(sample_settings, Encoder(embedder_dir),
                          tmp_path_factory.mktemp("watch-index"), OLD) as (servers, backend, _):
        yield servers, backend


@pytest.fixture(scope="module")
def target(scratch: tuple[Servers, LocalBackend]) -> str:
    servers, backend = scratch
    return servers.start(backend)


def watching(target: str, query: WatchQuery, **client: Any) -> Collector:
    collector = Collector(SearchClient(target, timeout_s=60, **client).watch(query))
    assert collector.caught_up.wait(30), "the watch never caught up"
    assert collector.error is None, collector.error
    return collector


@pytest.mark.slow
def test_matching_upserts_arrive_at_once_and_nothing_else(
    scratch: tuple[Servers, LocalBackend],
) -> None:
    """A gateway's own upserts are looked up at once, not at its next poll: with polls an
    hour apart (after the first look, at the start), only that look can deliver a match
    within the wait's timeout, a hang guard."""
    servers, backend = scratch
    target = servers.start(backend, watch_poll_s=3600.0)
    collector = watching(target, WatchQuery(QUERY, min_relevance=0.5))
    stream = [unrelated(i) for i in range(40)]
    stream.insert(7, MATCHING[0])
    stream.insert(29, MATCHING[1])
    last = last_match("own")
    with SearchClient(target, timeout_s=60) as client:
        for i in range(0, len(stream), 3):  # many small UpsertPapers calls, as they come
            batch = stream[i:i + 3]
            assert client.upsert(batch).upserted == len(batch)
        assert client.upsert([last]).upserted == 1
    collector.wait_for(last.id)
    collector.stop()
    # both, in order, and no others (nothing the stream brought can come after ``last``)
    assert collector.ids() == [*(p.id for p in MATCHING), last.id]
    for _, event in collector.events:
        if event.hit is not None:
            assert not event.replayed and event.hit.stages.dense == event.hit.score >= 0.5
    assert [e.caught_up for _, e in collector.events].count(True) == 1


peer = Paper(id="peer-gnn", title="Graph neural networks predict molecular properties",
             abstract="Message passing over molecular graphs predicts their properties.")
lagging = Paper(id="peer-gnn-lagging", title="Molecular property prediction with graph neural "
                "networks", abstract="Atoms and bonds as a graph for a GNN.")


def _write_through(writer: str, collector: Collector,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``peer`` (and two unrelated papers), then ``lagging`` stamped 3 s in the past, written
    through the gateway at ``writer``; both must arrive. Once both arrived, ``last_match`` is
    written by the real clock: what the polls and the sweep found before it (an unrelated
    paper, a paper sent twice) has arrived by the time it does."""
    import papersearch.index.store as store_module

    real_clock = store_module.now_ms
    last = last_match("peer")
    with SearchClient(writer, timeout_s=60) as client:
        assert client.upsert([unrelated(100), peer, unrelated(101)]).upserted == 3
        monkeypatch.setattr(store_module, "now_ms", lambda: real_clock() - 3_000)
        assert client.upsert([lagging]).upserted == 1
        for paper in (peer, lagging):
            collector.wait_for(paper.id)
        monkeypatch.setattr(store_module, "now_ms", real_clock)
        assert client.upsert([last]).upserted == 1
    collector.wait_for(last.id)
    collector.stop()
    *before, after = collector.ids()
    assert (sorted(before), after) == ([peer.id, lagging.id], last.id)


@pytest.mark.slow
def test_papers_written_through_another_gateway_arrive(
    sample_settings: Settings, embedder_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two gateways on one index, as replicas on a Qdrant server are: a watch on one gets what
    is written through the other (found by its poll of the index, not told by the writer),
    and a write stamped by a clock 3 s slow (within half of watch_lookback_s) at a sweep.
    Which poll finds which (the next one, or the sweep) is timed with the clock in hand below
    (test_a_prompt_write_arrives_at_the_next_poll_a_lagging_one_at_the_sweep)."""

    poll_s, lookback_s = 0.2, 20.0
    with scratch_gateways(sample_settings, Encoder(embedder_dir), tmp_path, OLD) as (
            servers, backend, _):  # its own index: the lagging write reaches no other test
        watched = servers.start(backend, watch_poll_s=poll_s, watch_lookback_s=lookback_s)
        writer = servers.start(backend)
        collector = watching(watched, WatchQuery(QUERY, min_relevance=0.5))
        _write_through(writer, collector, monkeypatch)


@pytest.mark.slow
def test_replay_since_a_date_then_live(target: str) -> None:
    collector = watching(target, WatchQuery(QUERY, min_relevance=0.3,
                                            replay_since=date(2024, 1, 1)))
    # replayed: matching papers published since then (the earlier test's too), best first;
    # not the 2021 one, nor the bread or other unrelated papers
    replayed = [e.hit for _, e in collector.events if e.hit is not None and e.replayed]
    assert "old-gnn-2024" in [h.paper.id for h in replayed]
    assert all(h.paper.published and h.paper.published >= date(2024, 1, 1)
               and h.score >= 0.3 and h.paper.id.startswith(("old-gnn", "new-gnn"))
               for h in replayed)
    assert [h.score for h in replayed] == sorted((h.score for h in replayed), reverse=True)
    assert "old-gnn-2021" not in collector.ids()
    first_live = next(i for i, (_, e) in enumerate(collector.events) if e.caught_up)
    assert all(e.replayed for _, e in collector.events[:first_live])
    with SearchClient(target, timeout_s=60) as client:
        client.upsert([Paper(id="live-gnn", title="Graph neural networks for molecules",
                             abstract="Predicting molecular properties with message passing.",
                             published=date(2020, 1, 1))])  # live: any date matches
    deadline = time.monotonic() + 5
    while "live-gnn" not in collector.ids() and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.stop()
    assert collector.ids(replayed=False) == ["live-gnn"]


def test_an_asyncio_watch_ended_by_cancel_or_close_raises_cancelled_as_the_sync_one(
        target: str) -> None:
    """On asyncio, cancel() (or the client's close) made the iteration raise grpc.aio's
    asyncio.CancelledError: ``except grpc.RpcError`` missed it and the consumer task read as
    cancelled itself. It is grpc.RpcError CANCELLED, as Watching's; a consumer task that is
    cancelled still gets its CancelledError."""

    async def consume(watch: AsyncWatching, caught_up: asyncio.Event) -> str:
        try:
            async for event in watch:
                if event.caught_up:
                    caught_up.set()
        except grpc.RpcError as error:
            return str(error.code().name)
        return "ended"

    async def scenario() -> None:
        for how in ("cancel", "close", "task"):
            client = AsyncSearchClient(target, timeout_s=60)
            watch = client.watch(WatchQuery(QUERY, min_relevance=0.3))
            caught_up = asyncio.Event()
            task = asyncio.create_task(consume(watch, caught_up))
            await asyncio.wait_for(caught_up.wait(), 30)
            if how == "cancel":
                watch.cancel()
            elif how == "close":
                await client.close()
            else:
                task.cancel()
            if how == "task":
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                assert await asyncio.wait_for(task, 30) == "CANCELLED", how
            await client.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_filters_apply_to_replay_and_live(target: str) -> None:
    flt = SearchFilter(categories=("q-bio.BM",))
    collector = watching(target, WatchQuery(QUERY, flt, min_relevance=0.3,
                                            replay_since=date(2000, 1, 1)))
    with SearchClient(target, timeout_s=60) as client:
        client.upsert([
            Paper(id="filtered-out", title="Graph neural networks for molecular properties",
                  abstract="Message passing on molecules.", categories=("cs.LG",)),
            Paper(id="filtered-in", title="Graph neural networks for molecular properties",
                  abstract="Message passing on molecules.", categories=("q-bio.BM",)),
        ])
        # written last and matched by the filter: once it is here, so is all before it
        client.upsert([Paper(id="filtered-last", title="Graph neural networks for molecules",
                             abstract="Message passing on molecules.", categories=("q-bio.BM",))])
    collector.wait_for("filtered-last")
    collector.stop()
    assert "filtered-out" not in collector.ids() and "filtered-in" in collector.ids()
    assert all("q-bio.BM" in e.hit.paper.categories for _, e in collector.events if e.hit)


@pytest.mark.slow
@pytest.mark.parametrize(("message", "field"), [
    (pb.WatchSearchRequest(query="  "), "query"),
    (pb.WatchSearchRequest(query="x" * 5000), "query"),
    (pb.WatchSearchRequest(query="x", min_relevance=1.5), "min_relevance"),
    (pb.WatchSearchRequest(query="x", min_relevance=float("nan")), "min_relevance"),
    (pb.WatchSearchRequest(query="x", replay_since="yesterday"), "replay_since"),
    (pb.WatchSearchRequest(query="x", replay_limit=101), "replay_limit"),
    (pb.WatchSearchRequest(query="x", replay_limit=-1), "replay_limit"),
    (pb.WatchSearchRequest(query="x", filter=pb.Filter(published_from="2024-02-30")),
     "filter.published_from"),
    (pb.WatchSearchRequest(query="x", filter=pb.Filter(authors=["a" * 257])),
     "filter.authors[0]"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_requests_name_the_field(target: str, message: pb.WatchSearchRequest,
                                         field: str) -> None:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream("/papersearch.v1.SearchService/WatchSearch",
                                    request_serializer=pb.WatchSearchRequest.SerializeToString,
                                    response_deserializer=pb.WatchEvent.FromString)
        with pytest.raises(grpc.RpcError) as error:
            next(iter(call(message, timeout=30)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.value.details()


@pytest.mark.slow
def test_watch_limit_and_drain(scratch: tuple[Servers, LocalBackend]) -> None:
    servers, backend = scratch
    address = servers.start(backend, watch_max_watches=1)
    first = watching(address, WatchQuery(QUERY))
    with SearchClient(address, timeout_s=60) as client, pytest.raises(grpc.RpcError) as error:
        list(client.watch(WatchQuery("another query"), timeout_s=30))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "serve.watch_max_watches" in error.value.details()
    # the watch did not hold the drain for its grace (DRAIN_GRACE_S, past the wait's guard)
    servers.loop.run(servers.gateways[-1].drain(DRAIN_GRACE_S), timeout=60)
    first.thread.join(10)
    assert first.error is not None and first.error.code() == grpc.StatusCode.UNAVAILABLE
    assert "replay_since" in first.error.details()


@pytest.mark.slow
@pytest.mark.parametrize("replay_read", ["the first copy", "the last copy"])
def test_a_paper_written_again_during_the_replay_ends_on_its_last_copy(
    scratch: tuple[Servers, LocalBackend], monkeypatch: pytest.MonkeyPatch, replay_read: str,
) -> None:
    """Of a replayed paper's copies queued while the replay ran, the last counts, sent only if
    the replay did not send it as it is: a copy written again after the one the replay read
    was skipped (the watcher kept the old text); one written before it must not be sent
    after it."""
    servers, backend = scratch
    address = servers.start(backend)
    gateway = servers.gateways[-1]
    replay = gateway.search._replay

    async def replay_with_writes(*args: Any) -> Any:
        hits = await replay(*args)
        [watch] = gateway.watches.watches
        sent = next(h.paper for h in hits if h.paper.id == "old-gnn-2024")
        other = dataclasses.replace(sent, abstract="Rewritten: equivariant message passing.")
        queued = (sent, other) if replay_read == "the first copy" else (other, sent)
        for paper in queued:  # both writes were queued while the replay ran
            gateway.watches.publish([paper], watch.vector[None, :], watch.embedder)
        return hits

    monkeypatch.setattr(gateway.search, "_replay", replay_with_writes)
    collector = watching(address, WatchQuery(QUERY, min_relevance=0.3,
                                             replay_since=date(2024, 1, 1)))
    deadline = time.monotonic() + (10 if replay_read == "the first copy" else 2)
    while not collector.ids(replayed=False) and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.stop()
    live = [e.hit.paper for _, e in collector.events if e.hit is not None and not e.replayed]
    expected = [("old-gnn-2024", "Rewritten: equivariant message passing.")]
    assert [(p.id, p.abstract) for p in live] == (
        expected if replay_read == "the first copy" else [])  # the replay sent the last
    assert collector.ids(replayed=True).count("old-gnn-2024") == 1


@pytest.mark.slow
@pytest.mark.parametrize("lookback_s", [60.0, 0.001])
def test_the_write_a_replay_read_is_not_sent_again_when_the_feed_finds_it(
    scratch: tuple[Servers, LocalBackend], lookback_s: float,
) -> None:
    """Another writer's paper, written after this gateway's last poll, is replayed, then found
    by the feed's next poll as it was replayed: not sent again within serve.watch_lookback_s
    (it came as a replay, then as new); a changed copy is. Past the window, a copy written
    again is sent as any paper's is."""
    servers, backend = scratch
    address = servers.start(backend, watch_lookback_s=lookback_s)
    gateway = servers.gateways[-1]
    collector = watching(address, WatchQuery(QUERY, min_relevance=0.3,
                                             replay_since=date(2024, 1, 1)))
    [sent] = [e.hit.paper for _, e in collector.events
              if e.hit is not None and e.hit.paper.id == "old-gnn-2024"]
    changed = dataclasses.replace(sent, abstract="Rewritten: equivariant message passing.")
    last = last_match(f"replay-{lookback_s}")
    time.sleep(lookback_s if lookback_s < 1 else 0)  # past the window, when it is the test

    async def feed_finds(papers: list[Paper]) -> None:
        [watch] = gateway.watches.watches
        for paper in papers:  # the feed's matches, as its next polls would bring them
            gateway.watches.publish([paper], watch.vector[None, :], watch.embedder)

    servers.loop.run(feed_finds([sent, changed, last]), timeout=30)
    collector.wait_for(last.id)
    collector.stop()
    live = [(e.hit.paper.id, e.hit.paper.abstract) for _, e in collector.events
            if e.hit is not None and not e.replayed]
    again = [(sent.id, sent.abstract)] if lookback_s < 1 else []
    assert live == [*again, (changed.id, changed.abstract), (last.id, last.abstract)]


@pytest.mark.slow
def test_copies_queued_during_the_replay_are_judged_so_however_late_they_are_read(
    scratch: tuple[Servers, LocalBackend], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The replay's copies rule holds for a copy queued while the replay ran even when the
    watcher reads it past serve.watch_lookback_s: judged by when it was queued, not read (a
    slow reader got the older copy and the replayed one again once the window ran out)."""
    servers, backend = scratch
    address = servers.start(backend, watch_lookback_s=0.05)
    gateway = servers.gateways[-1]
    replay, send = gateway.search._replay, servicers._send
    # a match of no replay: not in the index (the module's earlier tests wrote MATCHING there,
    # which the replay then sent, so its queued copy was rightly skipped)
    elsewhere = dataclasses.replace(MATCHING[0], id="queued-during-the-replay")

    async def slow_send(context: Any, watch: Any, event: pb.WatchEvent) -> None:
        if event.HasField("hit") and not event.replayed:
            await asyncio.sleep(0.2)  # each live event past the window
        await send(context, watch, event)

    async def replay_with_writes(*args: Any) -> Any:
        hits = await replay(*args)
        [watch] = gateway.watches.watches
        sent = next(h.paper for h in hits if h.paper.id == "old-gnn-2024")
        other = dataclasses.replace(sent, abstract="Rewritten: equivariant message passing.")
        for paper in (elsewhere, other, sent):  # queued while the replay ran
            gateway.watches.publish([paper], watch.vector[None, :], watch.embedder)
        return hits

    monkeypatch.setattr(servicers, "_send", slow_send)
    monkeypatch.setattr(gateway.search, "_replay", replay_with_writes)
    collector = watching(address, WatchQuery(QUERY, min_relevance=0.3,
                                             replay_since=date(2024, 1, 1)))
    last = last_match("slow-reader")

    async def feed_finds(paper: Paper) -> None:
        [watch] = gateway.watches.watches
        gateway.watches.publish([paper], watch.vector[None, :], watch.embedder)

    servers.loop.run(feed_finds(last), timeout=30)
    collector.wait_for(last.id)
    collector.stop()
    assert collector.ids(replayed=False) == [elsewhere.id, last.id]


@pytest.mark.slow
def test_watches_hear_of_papers_written_during_the_drain_notice(
    scratch: tuple[Servers, LocalBackend],
) -> None:
    """Through serve.drain_notice_s the gateway still takes writes and watches, but its watch
    feed was stopped when the drain began: a match written then reached no watch, and
    replay_since (by publication date) need not bring it back after the reconnect."""
    servers, backend = scratch
    address = servers.start(backend, watch_poll_s=60.0, drain_notice_s=3.0)
    first = watching(address, WatchQuery(QUERY, min_relevance=0.5))
    drained = asyncio.run_coroutine_threadsafe(servers.gateways[-1].drain(10.0),
                                               servers.loop.loop)
    time.sleep(0.5)
    opened = watching(address, WatchQuery(QUERY, min_relevance=0.5))  # in the notice
    with SearchClient(address, timeout_s=30) as client:
        client.upsert([Paper(id="notice-gnn", title="Graph neural networks for molecules",
                             abstract="Message passing networks predict molecular "
                                      "properties.")])
    drained.result(60)
    for collector in (first, opened):
        collector.thread.join(10)
        assert collector.ids() == ["notice-gnn"]
        assert collector.error is not None
        assert collector.error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_a_watcher_that_stops_reading_holds_neither_its_place_nor_a_drain(
    scratch: tuple[Servers, LocalBackend], caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that stops reading leaves a write waiting on flow control forever: the watch
    ended (here by overflow, then by the drain) must still leave the gateway's watches at
    once, and the drain must not wait out its grace for it."""
    servers, backend = scratch
    address = servers.start(backend, watch_max_watches=1, watch_queue=5)
    gateway = servers.gateways[-1]
    with grpc.insecure_channel(address) as channel:
        _stuck_watchers(servers, gateway, channel, caplog)


def _stuck_watchers(servers: Servers, gateway: Any, channel: grpc.Channel,
                    caplog: pytest.LogCaptureFixture) -> None:
    stuck = pb_grpc.SearchServiceStub(channel).WatchSearch(
        pb.WatchSearchRequest(query=QUERY), timeout=120)
    assert next(stuck).caught_up  # and never read again
    [watch] = gateway.watches.watches
    big = [Paper(id=f"big-{i}", title=f"Big paper {i}", abstract="x" * 19_000)
           for i in range(40)]

    async def flood() -> None:  # batches of matches until overflow ends the watch
        for _ in range(50):
            gateway.watches.publish(big, np.stack([watch.vector] * len(big)))
            await asyncio.sleep(0.02)

    servers.loop.run(flood())
    assert watch.ended is not None and watch.ended[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    deadline = time.monotonic() + 10
    while gateway.watches.watches and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.watches.watches == []  # its place is free although a write still waits
    stuck.cancel()  # gRPC cannot send that call's status now: an ordinary end, not an ERROR
    time.sleep(1.0)
    assert not [r for r in caplog.records
                if r.name.startswith("grpc") and r.levelno >= logging.ERROR]
    second = pb_grpc.SearchServiceStub(channel).WatchSearch(  # its place: admitted
        pb.WatchSearchRequest(query=QUERY), timeout=120)
    assert next(second).caught_up  # and never read again either
    [live] = gateway.watches.watches
    many = [dataclasses.replace(p, id=f"{p.id}-{i}") for i in range(10) for p in big]

    async def fill() -> None:  # one batch (never ends a watch) larger than flow control lets by
        gateway.watches.publish(many, np.stack([live.vector] * len(many)))
        await asyncio.sleep(1.0)

    servers.loop.run(fill())
    assert live.ended is None and live.pending  # its handler waits on a write
    # not the grace (DRAIN_GRACE_S, past the wait's hang guard): the stuck write was dropped
    servers.loop.run(gateway.drain(DRAIN_GRACE_S), timeout=60)
    assert live.ended is not None and live.ended[0] == grpc.StatusCode.UNAVAILABLE
    second.cancel()


def test_grpc_s_traceback_for_a_departed_client_is_not_an_error() -> None:
    """What gRPC logs when it cannot send a status to a client that left (ExecuteBatchError)
    is an ordinary end of a call; any other record passes."""
    from papersearch.gateway.server import CLIENT_GONE

    class ExecuteBatchError(Exception):
        pass

    def record(error: type[BaseException] | None) -> logging.LogRecord:
        info = None if error is None else (error, error(), None)
        return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "f", 1,
                                 "raised by servicer method", None, info)

    assert not CLIENT_GONE.filter(record(ExecuteBatchError))
    assert CLIENT_GONE.filter(record(RuntimeError)) and CLIENT_GONE.filter(record(None))


@pytest.mark.slow
def test_a_watch_ended_by_its_deadline_is_counted_as_expired(
    target: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC cancels the handler when the deadline passes (a few ms early): the request metric
    says DEADLINE_EXCEEDED, as the client sees it, not CANCELLED."""
    counted: list[tuple[str, str]] = []
    monkeypatch.setattr(Metrics, "request",
                        lambda self, method, code, latency_s: counted.append((method, code)))
    with SearchClient(target, timeout_s=60) as client, pytest.raises(grpc.RpcError) as error:
        list(client.watch(WatchQuery(QUERY), timeout_s=1.5))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while not [c for c in counted if c[0] == "WatchSearch"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c for c in counted if c[0] == "WatchSearch"] == [("WatchSearch", "DEADLINE_EXCEEDED")]


def test_hub_matches_many_watches_at_once_and_ends_a_slow_watcher() -> None:
    rng = np.random.default_rng(0)
    hub = WatchHub(max_watches=500, queue=2)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    watches = [hub.add(v, 0.99, SearchFilter()) for v in vectors]
    assert hub.add(vectors[0], 0.0, SearchFilter()) is None  # the limit
    papers = [Paper(id=f"p{i}", title=f"paper {i}", abstract="") for i in range(3)]
    # paper i has watch i's vector: it matches watch i only
    assert hub.publish(papers, vectors[:3]) == 3
    assert [len(w.pending) for w in watches[:4] if w] == [1, 1, 1, 0]
    slow = watches[0]
    assert slow is not None
    hub.publish(papers[:1], vectors[:1])  # two waiting: the queue of 2 is full
    assert slow.ended is None
    hub.publish(papers[:1], vectors[:1])  # a batch finds it still 2 behind
    assert slow.ended is not None and slow.ended[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not slow.pending and watches[1] is not None and watches[1].ended is None
    # its place is held until its handler ends, at once even when a write waits (a watcher
    # that stopped reading: test_a_watcher_that_stops_reading_...)
    assert slow in hub.watches and hub.open == 500
    hub.remove(slow)
    assert hub.add(vectors[0], 0.0, SearchFilter()) is not None
    hub.close()
    assert all(w is not None and w.ended is not None for w in watches)
    assert hub.add(vectors[0], 0.0, SearchFilter()) is None


def test_one_batch_never_ends_a_watcher_that_kept_up() -> None:
    # a bulk ingest can match a broad watch more often in one poll than serve.watch_queue
    # allows: a watcher with nothing waiting takes the whole batch (it was ended, unread)
    hub = WatchHub(max_watches=2, queue=2)
    watch = hub.add(np.array([1.0, 0.0], dtype=np.float32), 0.5, SearchFilter())
    assert watch is not None
    papers = [Paper(id=f"p{i}", title=f"paper {i}", abstract="") for i in range(5)]
    dense = np.tile(np.array([1.0, 0.0], dtype=np.float32), (5, 1))
    assert hub.publish(papers, dense) == 5
    assert watch.ended is None and [m.paper.id for m in watch.pending] == [p.id for p in papers]
    watch.pending.clear()  # it reads them all
    assert hub.publish(papers[:1], dense[:1]) == 1 and watch.ended is None
    hub.publish(papers, dense)  # one waiting, under the queue of 2: queued
    hub.publish(papers[:1], dense[:1])  # six waiting: this batch ends it
    assert watch.ended is not None and watch.ended[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


class Moving:
    """A feed's backend whose collection moves to another embedder (a migration's swap): the
    new collection's window holds every paper, freshly stamped by the copy."""

    def __init__(self) -> None:
        self.embedder = "old-sha"
        self.window: dict[str, tuple[int, Paper]] = {}
        self.swapped: int | None = None  # the pointer's swap time, None: not recorded

    def pinned(self) -> Moving:
        return self

    def swapped_at_ms(self) -> int | None:
        return self.swapped

    async def embedder_sha(self) -> str:
        return self.embedder

    async def indexed_since(self, since_ms: int, known: dict[str, int] | None) -> Indexed:
        window = {pid: stamp for pid, (stamp, _) in self.window.items() if stamp >= since_ms}
        new = [] if known is None else [
            paper for pid, (stamp, paper) in self.window.items() if known.get(pid) != stamp]
        return Indexed(window, new, np.ones((len(new), 2), dtype=np.float32) / np.sqrt(2))


def test_the_feed_ends_watches_when_the_index_moves_to_another_embedder() -> None:
    import asyncio

    from papersearch.gateway.watch import MOVED, WatchFeed
    from papersearch.index.store import now_ms

    backend = Moving()
    hub = WatchHub(max_watches=4, queue=100)
    feed = WatchFeed(hub, backend, Settings().serve)  # type: ignore[arg-type]
    vector = np.ones(2, dtype=np.float32) / np.sqrt(2)
    papers = [Paper(id=f"p{i}", title=f"paper {i}", abstract="") for i in range(5)]

    async def scenario() -> None:
        backend.window = {p.point_id: (now_ms(), p) for p in papers[:3]}
        await feed.poll()  # learns the window
        old = hub.add(vector, 0.0, SearchFilter(), "old-sha")
        assert old is not None
        backend.embedder = "new-sha"  # swapped: every paper stamped again by the copy
        backend.window = {p.point_id: (now_ms() + 1, p) for p in papers[:3]}
        assert await feed.poll() == 0  # the new collection's window learnt, not published
        assert old.ended == (grpc.StatusCode.UNAVAILABLE, MOVED) and not old.pending
        new = hub.add(vector, 0.0, SearchFilter(), "new-sha")
        assert new is not None
        backend.window[papers[4].point_id] = (now_ms() + 2, papers[4])
        await feed.poll()
        assert [m.paper.id for m in new.pending] == ["p4"] and new.ended is None
        assert not old.pending  # ended: offered nothing more

    asyncio.run(scenario())


class Reading(Moving):
    """A feed's backend that reads as the index does: the ids stamped since the time asked,
    and the papers among those the feed did not know."""

    async def indexed_since(self, since_ms: int, known: dict[str, int] | None) -> Indexed:
        window = {pid: stamp for pid, (stamp, _) in self.window.items() if stamp >= since_ms}
        new = [] if known is None else [self.window[pid][1] for pid, stamp in window.items()
                                        if known.get(pid) != stamp]
        return Indexed(window, new, np.ones((len(new), 2), dtype=np.float32) / np.sqrt(2))


def test_a_step_back_of_the_gateways_clock_does_not_put_the_sweeps_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's clock 8 s fast at a sweep, then stepped back to the right time (an NTP
    correction); a busy writer stamps a paper every poll, another one whose clock lags 3 s
    writes "late". The next sweep was due on the wall clock at the fast clock's time, 8 s
    later than meant: by then the look-back window had passed "late", which was never sent.
    Sweeps are timed on the monotonic clock: the next one comes half the window after the
    last, and delivers it."""
    true = {"ms": 1_700_000_000_000}
    fast = {"ms": 8_000}
    monkeypatch.setattr(watch_module, "now_ms", lambda: true["ms"] + fast["ms"])
    monkeypatch.setattr(watch_module, "time", ModuleStandIn(
        time, monotonic=lambda: true["ms"] / 1000))
    serve = Settings().serve
    assert serve.watch_lookback_s == 10  # a sweep every 5 s, reading back 10 s
    backend = Reading()
    hub = WatchHub(max_watches=4, queue=1_000)
    feed = WatchFeed(hub, backend, serve)  # type: ignore[arg-type]
    start = true["ms"]
    late = Paper(id="late", title="written by a writer whose clock lags 3 s", abstract="")

    def busy(tick: int) -> None:
        true["ms"] = start + 500 * tick
        paper = Paper(id=f"busy-{tick}", title="written by a writer on time", abstract="")
        backend.window[paper.point_id] = (true["ms"], paper)

    async def scenario() -> int | None:
        busy(0)
        await feed.poll()  # a sweep: learns the window
        watch = hub.add(np.ones(2, dtype=np.float32) / np.sqrt(2), -1.0, SearchFilter())
        assert watch is not None
        fast["ms"] = 0  # stepped back after the sweep
        for tick in range(1, 31):  # 15 s of polls, every 0.5 s
            busy(tick)
            if tick == 2:
                backend.window[late.point_id] = (true["ms"] - 3_000, late)
            await feed.poll()
            if late.id in [m.paper.id for m in watch.pending]:
                return true["ms"] - start
        return None

    assert asyncio.run(scenario()) == 5_000  # at the first sweep after the step


def test_a_prompt_write_arrives_at_the_next_poll_a_lagging_one_at_the_sweep(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between sweeps a poll reads back RECENT_MS from the newest stamp it knows: a paper
    stamped on time is published at the next poll, not at the next sweep; one whose writer's
    clock lags 3 s is older than that and waits for the sweep (half the window after the
    last one), which publishes it."""
    true = {"ms": 1_700_000_000_000}
    monkeypatch.setattr(watch_module, "now_ms", lambda: true["ms"])
    monkeypatch.setattr(watch_module, "time", ModuleStandIn(
        time, monotonic=lambda: true["ms"] / 1000))
    serve = Settings().serve
    assert serve.watch_lookback_s == 10  # a sweep every 5 s
    backend = Reading()
    hub = WatchHub(max_watches=4, queue=1_000)
    feed = WatchFeed(hub, backend, serve)  # type: ignore[arg-type]
    start = true["ms"]
    prompt = Paper(id="prompt", title="written by a writer on time", abstract="")
    late = Paper(id="late", title="written by a writer whose clock lags 3 s", abstract="")
    known = Paper(id="known", title="written before the watch began", abstract="")
    arrived: dict[str, int] = {}

    async def scenario() -> None:
        backend.window[known.point_id] = (start, known)
        await feed.poll()  # a sweep: learns the window
        watch = hub.add(np.ones(2, dtype=np.float32) / np.sqrt(2), -1.0, SearchFilter())
        assert watch is not None
        for tick in range(1, 21):  # 10 s of polls, every 0.5 s
            true["ms"] = start + 500 * tick
            if tick == 2:
                backend.window[prompt.point_id] = (true["ms"], prompt)
                backend.window[late.point_id] = (true["ms"] - 3_000, late)
            await feed.poll()
            for match in watch.pending:
                arrived.setdefault(match.paper.id, true["ms"] - start)

    asyncio.run(scenario())
    assert arrived == {"prompt": 1_000, "late": 5_000}


def test_papers_are_matched_only_against_watches_of_their_embedder() -> None:
    hub = WatchHub(max_watches=4, queue=10)
    flat = hub.add(np.ones(2, dtype=np.float32) / np.sqrt(2), 0.0, SearchFilter(), "a")
    other = hub.add(np.ones(3, dtype=np.float32) / np.sqrt(3), 0.0, SearchFilter(), "b")
    assert flat is not None and other is not None
    paper = Paper(id="p", title="t", abstract="")
    # a poll that read embedder a's collection while a watch of b was added: b's is skipped
    assert hub.publish([paper], np.ones((1, 2), dtype=np.float32) / np.sqrt(2), "a") == 1
    assert len(flat.pending) == 1 and not other.pending


def test_a_poll_of_many_papers_lets_the_loop_run_between_its_steps() -> None:
    """A bulk ingest's papers, every one matching every watch: the feed matches them in steps,
    another task runs between any two (at most STEP_PAIRS pairs and STEP_WAKES watchers woken
    a step), and the poll is still one batch: in order, none lost, no watcher ended by it (a
    queue of 10, 1,000 matches each), one that leaves between steps let go."""
    backend = Moving()
    hub = WatchHub(max_watches=300, queue=10)
    feed = WatchFeed(hub, backend, Settings().serve)  # type: ignore[arg-type]
    papers = [Paper(id=f"p{i}", title=f"paper {i}", abstract="") for i in range(1000)]
    vector = np.ones(2, dtype=np.float32) / np.sqrt(2)

    async def scenario() -> None:
        await feed.poll()  # learns the (empty) window
        watches = [hub.add(vector, -1.0, SearchFilter()) for _ in range(300)]  # filter only
        assert all(watches)
        leaving = watches[0]
        assert leaving is not None
        stamp = now_ms()
        backend.window = {p.point_id: (stamp, p) for p in papers}
        seen: list[tuple[int, int]] = []  # at each turn of the other task: matches, woken

        async def other() -> None:
            while True:
                seen.append((sum(len(w.pending) for w in watches if w),
                             sum(bool(w.pending) for w in watches if w)))
                if leaving.pending and leaving in hub.watches:  # its client went
                    hub.remove(leaving)
                    leaving.end(grpc.StatusCode.CANCELLED, "gone")
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        queued = await feed.poll()
        task.cancel()
        ids = [p.id for p in papers]
        for watch in watches[1:]:
            assert watch is not None and watch.ended is None
            assert [m.paper.id for m in watch.pending] == ids
        kept = len(leaving.pending)
        assert 0 < kept < 1000 and queued == 299 * 1000 + kept
        steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(seen, seen[1:], strict=False)]
        assert len([s for s in steps if s[0]]) > 299 * 1000 // STEP_PAIRS
        assert max(pairs for pairs, _ in steps) <= STEP_PAIRS
        assert max(woken for _, woken in steps) <= STEP_WAKES

    asyncio.run(scenario())


def test_a_batch_ends_a_watcher_still_behind_without_building_its_matches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Match] = []

    class Counted(Match):
        __slots__ = ()

        def __init__(self, paper: Paper, cosine: float) -> None:
            super().__init__(paper, cosine)
            built.append(self)

    monkeypatch.setattr(watch_module, "Match", Counted)
    hub = WatchHub(max_watches=2, queue=3)
    vector = np.array([1.0, 0.0], dtype=np.float32)
    behind, keeping_up = hub.add(vector, 0.5, SearchFilter()), hub.add(vector, 0.5, SearchFilter())
    assert behind is not None and keeping_up is not None
    papers = [Paper(id=f"p{i}", title=f"paper {i}", abstract="") for i in range(500)]
    dense = np.tile(vector, (500, 1))
    hub.publish(papers[:3], dense[:3])
    keeping_up.pending.clear()  # it read them; the other did not
    built.clear()
    assert hub.publish(papers, dense) == 500  # queued: the one that kept up's
    assert behind.ended is not None and behind.ended[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(built) == 500 and all(m.paper is p for m, p in zip(built, papers, strict=True))
    assert list(keeping_up.pending) == built and keeping_up.ended is None


def matches_filter(flt: SearchFilter, paper: Paper) -> bool:
    return FilterRule.of(flt).admits(paper)


def test_matches_are_those_of_each_pair_and_filter_one_by_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the plain rule (every pair's cosine against its watch's threshold, then its
    filter), in one go and in steps alike; a filter is asked once per paper, however many
    watches share it, and a watch without one never asks."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = rng.normal(size=(700, 16)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    papers = [Paper(id=f"p{i}", title="t", abstract="", categories=(("cs.LG",), ("math.CO",),
                                                                     ())[i % 3],
                    authors=("A",) if i % 5 else ("B",),
                    published=None if i % 7 == 0 else date(2024, 1 + i % 12, 1))
              for i in range(700)]
    filters = [SearchFilter(), SearchFilter(categories=("cs.LG",)),
               SearchFilter(authors=("B",), categories=("cs.LG", "math.CO")),
               SearchFilter(published_from=date(2024, 6, 1))]
    thresholds = rng.uniform(-0.3, 0.4, size=120)
    cosines = vectors @ dense.T
    expected = [[(papers[j].id, pytest.approx(float(cosines[i, j]), abs=1e-5))
                 for j in range(700) if cosines[i, j] >= thresholds[i]
                 and matches_filter(filters[i % 4], papers[j])] for i in range(120)]
    asked: list[tuple[SearchFilter, str]] = []
    admits = FilterRule.admits

    def counted(rule: FilterRule, paper: Paper) -> bool:
        asked.append((rule.filter, paper.id))
        return admits(rule, paper)

    monkeypatch.setattr(FilterRule, "admits", counted)
    for stepwise in (False, True):
        hub = WatchHub(max_watches=120, queue=1000)
        watches = [hub.add(v, float(t), filters[i % 4])
                   for i, (v, t) in enumerate(zip(vectors, thresholds, strict=True))]
        asked.clear()
        queued = asyncio.run(hub.publish_in_steps(papers, dense)) if stepwise \
            else hub.publish(papers, dense)
        got = [[(m.paper.id, m.cosine) for m in w.pending] for w in watches if w]
        assert got == expected and queued == sum(map(len, expected))
        assert len(asked) == len(set(asked)) and all(flt != SearchFilter() for flt, _ in asked)


def test_filter_matching_agrees_with_the_index_rules() -> None:
    paper = Paper(id="p", title="t", abstract="", authors=("A. Author",),
                  categories=("cs.LG", "stat.ML"), published=date(2024, 5, 1))
    undated = Paper(id="u", title="t", abstract="")
    assert matches_filter(SearchFilter(), paper) and matches_filter(SearchFilter(), undated)
    assert matches_filter(SearchFilter(date(2024, 5, 1), date(2024, 5, 1)), paper)
    assert not matches_filter(SearchFilter(date(2024, 5, 2)), paper)
    assert not matches_filter(SearchFilter(None, date(2024, 4, 30)), paper)
    assert not matches_filter(SearchFilter(date(2000, 1, 1)), undated)
    assert matches_filter(SearchFilter(categories=("x", "stat.ML")), paper)
    assert not matches_filter(SearchFilter(categories=("cs.lg",)), paper)  # case-sensitive
    assert matches_filter(SearchFilter(authors=("A. Author",)), paper)
    assert not matches_filter(SearchFilter(categories=("cs.LG",), authors=("B",)), paper)


@pytest.mark.slow
def test_http_streams_ndjson(scratch: tuple[Servers, LocalBackend]) -> None:
    servers, backend = scratch
    port = free_port()
    address = servers.start(backend, http_port=port)
    url = f"http://127.0.0.1:{port}/papersearch.v1.SearchService/WatchSearch"
    body = json.dumps({"query": QUERY, "min_relevance": 0.3, "replay_since": "2024-01-01",
                       "filter": {"published_to": "2024-12-31"}}).encode()
    request = urllib.request.Request(url, body, headers={"Content-Type": "application/json",
                                                         "x-timeout-ms": "3000"})
    lines: list[dict[str, Any]] = []

    def upsert_when_caught_up() -> None:
        while not any(line.get("caught_up") for line in lines):
            time.sleep(0.01)
        with SearchClient(address, timeout_s=60) as client:
            client.upsert([Paper(id="http-gnn", title="Graph networks for molecules",
                                 abstract="Molecular property prediction with GNNs.",
                                 # before 2024: no other test's replay since then brings it
                                 published=date(2023, 8, 1))])

    writer = threading.Thread(target=upsert_when_caught_up, daemon=True)
    writer.start()
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        for raw in response:
            lines.append(json.loads(raw))
    writer.join(10)
    replayed = [line["hit"]["paper"]["paper_id"] for line in lines if line.get("replayed")]
    assert replayed == ["old-gnn-2024"] and lines[1]["caught_up"] is True
    live = [line for line in lines if "hit" in line and not line["replayed"]]
    assert [line["hit"]["paper"]["paper_id"] for line in live] == ["http-gnn"]
    assert lines[-1]["error"]["status"] == "DEADLINE_EXCEEDED"  # the stream's end, as a line
    # an error before the stream starts is a plain HTTP error
    bad = urllib.request.Request(url, b'{"query": " "}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(bad, timeout=30)
    assert error.value.code == 400 and "query" in json.load(error.value)["error"]["message"]


@pytest.mark.slow
def test_an_http_watch_ends_when_its_client_goes(scratch: tuple[Servers, LocalBackend]) -> None:
    """A watch whose HTTP client disconnects ends then, freeing its place under
    serve.watch_max_watches, not at its next match (which may never come)."""
    servers, backend = scratch
    port = free_port()
    address = servers.start(backend, http_port=port, watch_max_watches=1)
    url = f"http://127.0.0.1:{port}/papersearch.v1.SearchService/WatchSearch"
    request = urllib.request.Request(url, json.dumps({"query": QUERY, "min_relevance": 0.99})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(next(response))["caught_up"] is True
    # gone; a gRPC watch gets the one place (it runs until its own deadline)
    codes = []
    ends = time.monotonic() + 10
    while time.monotonic() < ends:
        with SearchClient(address, timeout_s=60) as client, pytest.raises(grpc.RpcError) as error:
            list(client.watch(WatchQuery("another query"), timeout_s=1))
        codes.append(error.value.code())
        if codes[-1] != grpc.StatusCode.RESOURCE_EXHAUSTED:
            break
        time.sleep(0.2)
    assert codes[-1] == grpc.StatusCode.DEADLINE_EXCEEDED, codes  # freed, with no match sent


@pytest.mark.slow
def test_an_http_watcher_that_stops_reading_is_let_go(
    scratch: tuple[Servers, LocalBackend],
) -> None:
    """An HTTP client that stops reading (its connection open) held the front's handler in a
    write for ever, long after the watch behind it had ended; a line not taken within
    serve.http_body_timeout_s drops the connection."""
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port, watch_queue=5, http_body_timeout_s=1.0)
    gateway = servers.gateways[-1]
    body = json.dumps({"query": QUERY}).encode()
    with socket.socket() as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        reader.settimeout(30)
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"POST /papersearch.v1.SearchService/WatchSearch HTTP/1.1\r\n"
                       b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = b""
        while b"caught_up" not in head:
            head += reader.recv(4096)  # then never read again
        [watch] = gateway.watches.watches
        big = [Paper(id=f"big-{i}", title=f"Big paper {i}", abstract="x" * 19_000)
               for i in range(40)]

        async def flood() -> None:
            for _ in range(50):
                gateway.watches.publish(big, np.stack([watch.vector] * len(big)))
                await asyncio.sleep(0.02)

        servers.loop.run(flood())
        deadline = time.monotonic() + 30
        while sum(gateway.http.watching) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(gateway.http.watching) == 0  # the handler let go of the stalled client


@pytest.mark.slow
def test_cli_prints_matches_as_they_arrive(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    from papersearch.cli import main

    def upsert_soon() -> None:
        time.sleep(1.5)
        with SearchClient(target, timeout_s=60) as client:
            # before 2024: the replays since then of the tests after it (in another order)
            # do not bring it (written in 2024, it was replayed to two of them)
            client.upsert([Paper(id="cli-gnn", title="Graph neural networks for molecules",
                                 abstract="Molecular property prediction.",
                                 published=date(2023, 9, 1), categories=("cs.LG",))])

    writer = threading.Thread(target=upsert_soon, daemon=True)
    writer.start()
    handlers, level = logging.root.handlers[:], logging.root.level
    try:  # main configures logging on capsys' stream, which closes after this test
        assert main(["watch", QUERY, "--target", target, "--since", "2024-01-01", "--to",
                     "2024-12-31", "--category", "cs.LG", "--min-relevance", "0.3",
                     "--timeout-s", "4", "--json"]) == 0
    finally:
        logging.root.handlers[:], logging.root.level = handlers, level
    writer.join(10)
    out, err = capsys.readouterr()
    printed = [json.loads(line) for line in out.splitlines()]
    assert [(p["paper_id"], p["replayed"]) for p in printed] == [
        ("old-gnn-2024", True), ("cli-gnn", False)]
    assert "watching" in err


@pytest.mark.slow
def test_cli_reconnects_after_a_drain(sample_settings: Settings, embedder_dir: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`papersearch watch` outlives its gateway: drained, it opens the watch again on the
    gateway that takes its place (same address), catching up on what was written meanwhile
    with a replay from that day; nothing is printed twice."""
    from papersearch.cli import main

    today = date.today()
    gap = Paper(id="gap-gnn", title="Graph neural networks for molecular properties",
                abstract="Written while no watch was open.", published=today)
    live = Paper(id="live-gnn-2", title="Molecular graphs and neural message passing",
                 abstract="Predicting properties of molecules with graph neural networks.",
                 published=today)
    with scratch_gateways(sample_settings, Encoder(embedder_dir), tmp_path, OLD) as (
            servers, backend, _):
        port = free_port()
        target = servers.start(backend, grpc_port=port)

        def restart_and_write() -> None:
            time.sleep(2.0)  # the CLI's watch is live
            servers.loop.run(servers.gateways[-1].drain(0.5))
            successor = servers.start(backend, grpc_port=port)
            with SearchClient(successor, timeout_s=60) as client:
                client.upsert([gap])
                time.sleep(2.0)  # the CLI is back
                client.upsert([live])

        writer = threading.Thread(target=restart_and_write, daemon=True)
        writer.start()
        handlers, level = logging.root.handlers[:], logging.root.level
        try:
            assert main(["watch", QUERY, "--target", target, "--min-relevance", "0.3",
                         "--since", "2024-01-01", "--timeout-s", "8", "--json"]) == 0
        finally:
            logging.root.handlers[:], logging.root.level = handlers, level
        writer.join(10)
    out, err = capsys.readouterr()
    printed = [json.loads(line)["paper_id"] for line in out.splitlines()]
    assert printed[0] == "old-gnn-2024"  # the first replay; not printed again after reconnecting
    assert sorted(printed[1:]) == sorted([gap.id, live.id])
    assert "reconnecting" in err and err.count("watching") == 2


class FakeRpcError(grpc.RpcError):
    """``early``: a DEADLINE_EXCEEDED the server ended the call with before the client's own
    deadline (which, without it, has passed: FakeWatches' clock moves to it)."""

    def __init__(self, code: grpc.StatusCode, early: bool = False) -> None:
        self._code, self.early = code, early

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "connection refused" if self._code == grpc.StatusCode.UNAVAILABLE else "done"


class FakeWatches:
    """The CLI's SearchClient stood in for: each watch() call plays the next list of events
    (an exception ends the stream with it); the command's pauses are recorded, not slept, and
    a stream's DEADLINE_EXCEEDED moves the clock to its deadline (forward only)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, streams: list[list[Any]]) -> None:
        from papersearch import cli, client

        self.streams, self.opened, self.pauses = streams, list[WatchQuery](), list[float]()
        self.ahead = 0.0
        watches = self

        monkeypatch.setattr(client, "SearchClient", lambda *_, **__: self)
        # the command's own `time` (cli.time): other threads' sleeps and clocks are untouched
        monkeypatch.setattr(cli, "time", ModuleStandIn(
            time, sleep=watches.pauses.append,
            monotonic=lambda: time.monotonic() + watches.ahead))

    def __enter__(self) -> FakeWatches:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def watch(self, query: WatchQuery, timeout_s: float | None = None) -> Iterator[Any]:
        self.opened.append(query)
        events = self.streams[len(self.opened) - 1]
        watches = self

        class Stream:
            def __iter__(self) -> Iterator[Any]:
                for event in events:
                    if isinstance(event, FakeRpcError) and not event.early and (
                            event.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                        watches.ahead += timeout_s or 0.0  # the client's deadline passed
                    if isinstance(event, Exception):
                        raise event
                    yield event

            def cancel(self) -> None:
                pass

        return Stream()  # type: ignore[return-value]

    def run(self, *args: str) -> int:
        from papersearch import cli

        handlers, level = logging.root.handlers[:], logging.root.level
        try:
            return cli.main(["watch", QUERY, "--target", "127.0.0.1:1", *args])
        finally:
            logging.root.handlers[:], logging.root.level = handlers, level


def test_cli_keeps_reconnecting_while_the_gateway_is_not_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A watch live once, then its gateway restarting: the first reconnect found nothing
    listening yet and the command exited 2 (only a stream that had caught up counted)."""
    fake = FakeWatches(monkeypatch, [
        [WatchEvent(None, caught_up=True), FakeRpcError(grpc.StatusCode.UNAVAILABLE)],
        [FakeRpcError(grpc.StatusCode.UNAVAILABLE)],  # not back yet
        [FakeRpcError(grpc.StatusCode.UNAVAILABLE)],
        [WatchEvent(None, caught_up=True), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)],
    ])
    assert fake.run("--timeout-s", "60") == 0
    assert len(fake.opened) == 4 and fake.pauses == [0.5, 1.0, 2.0]
    assert fake.opened[1].replay_since is not None  # the reconnects replay from the day it ended
    assert capsys.readouterr().err.count("reconnecting") == 3


def test_cli_a_gateways_deadline_before_the_timeout_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`watch --timeout-s 60` exited 0 without a word when the gateway ended the call with
    DEADLINE_EXCEEDED after 1.5 s (its encode past serve.max_deadline_s): only the client's
    own deadline is the watch running its course."""
    fake = FakeWatches(monkeypatch, [[FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                   early=True)]])
    assert fake.run("--timeout-s", "60") == 2
    assert "DEADLINE_EXCEEDED" in capsys.readouterr().err
    fake = FakeWatches(monkeypatch, [[FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)]])
    assert fake.run("--timeout-s", "60") == 0


def test_cli_a_watch_stream_that_ends_without_a_status_is_not_reopened_forever(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A stream that ended OK (a proxy's, another server's; a gateway's never does) was opened
    again every pause, --no-reconnect or not, and silently."""
    fake = FakeWatches(monkeypatch, [[]])
    assert fake.run("--no-reconnect") == 2
    assert len(fake.opened) == 1 and "ended without a status" in capsys.readouterr().err
    fake = FakeWatches(monkeypatch, [[WatchEvent(None, caught_up=True)], [
        WatchEvent(None, caught_up=True), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)]])
    assert fake.run("--timeout-s", "0.45") == 0  # live once: reopened, within the time left
    assert len(fake.opened) == 2 and fake.pauses and fake.pauses[0] <= 0.45

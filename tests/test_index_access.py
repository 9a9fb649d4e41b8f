"""The gateway's index access (pipeline/index_access.py): the embedded shard in a worker thread,
a Qdrant server through the asyncio client (index/server_async.py), the same answers as the
blocking Store either way.

No Qdrant server runs here. The asyncio path is tested with qdrant-client's own asyncio local
mode, linked to the blocking local-mode client's collections (``async_twin``): the gateway's two
clients then see one collection, as both would on one server. Deadlines and errors are tested
against real sockets: one nobody listens on, one that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException

from papersearch.errors import NotReady, Overloaded
from papersearch.index import server_async
from papersearch.index.edge import EdgeStore
from papersearch.index.errors import PaperNotFound, StoreUnavailable
from papersearch.index.query import Examples, SearchFilter
from papersearch.index.server import ServerStore, connect
from papersearch.index.server_async import AsyncServerEngine, connect_async
from papersearch.index.sparse import Bm25Encoder
from papersearch.index.store import Store
from papersearch.pipeline.index_access import IndexAccess
from papersearch.retriever.opener import CollectionOpener
from papersearch.retriever.retriever import Retriever
from papersearch.settings import IndexSettings, Settings
from tests.ports import free_port
from tests.test_index import (
    DENSE,
    DIM,
    PAPERS,
    RARE,
    RARE_AT,
    SHA,
    SPARSE,
    flaky_store,
    ids,
    request,
)

pytestmark = [  # qdrant-client local mode: no payload indexes, always exact search
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


def async_twin(client: QdrantClient) -> AsyncQdrantClient:
    """An asyncio local-mode client over ``client``'s collections (same engine objects)."""
    twin = AsyncQdrantClient(":memory:")
    twin._client.collections = client._client.collections  # type: ignore[union-attr]
    return twin


@pytest.fixture(params=["edge", "server"])
def access(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[IndexAccess, Store]]:
    """Index access over a filled store of each backend, and that store."""
    settings = IndexSettings(data_dir=tmp_path)
    store: Store
    if request.param == "edge":
        store = EdgeStore(settings)
    else:
        store = ServerStore(settings, client=QdrantClient(":memory:"))
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS, DENSE, SPARSE)
    client = store.client if isinstance(store, ServerStore) else None
    yield IndexAccess(
        CollectionOpener(Settings(index=settings), DIM, SHA, make_store=lambda _: store),
        make_client=lambda _: async_twin(client),  # type: ignore[arg-type]
    ), store


def run(access: IndexAccess, calls: Callable[[], Awaitable[Any]]) -> Any:
    """``calls`` on one event loop, then ``access`` closed on it (as the gateway does)."""
    async def main() -> Any:
        try:
            return await calls()
        finally:
            await access.close()

    return asyncio.run(main())


def test_answers_like_the_store(access: tuple[IndexAccess, Store]) -> None:
    index, store = access
    retriever = Retriever(store)
    flt = SearchFilter(categories=("cs.CL",))
    expected = (
        retriever.search(RARE, DENSE[RARE_AT], mode="hybrid", limit=5),
        retriever.search(RARE, None, mode="sparse", limit=3),
        store.query(request("dense", 2, limit=4, filter=flt)),
        store.similar(Examples((PAPERS[3].id,)), 4),
    )
    hybrid, sparse, dense, no_vector, similar, paper, missing, ready = run(
        index, lambda: asyncio.gather(
            index.retrieve(RARE, DENSE[RARE_AT], "hybrid", 5, SearchFilter()),
            index.retrieve(RARE, None, "sparse", 3, SearchFilter()),
            index.retrieve(RARE, DENSE[2], "dense", 4, flt),
            index.retrieve(RARE, None, "dense", 5, SearchFilter()),
            index.similar(Examples((PAPERS[3].id,)), 4, SearchFilter()),
            index.get(PAPERS[5].id),
            index.get("2401.99999"),
            index.ready(),
            return_exceptions=True))
    # index.prf_enabled (on by default) expands hybrid searches only
    assert hybrid.feedback and not sparse.feedback and not dense.feedback
    hybrid, sparse, dense = hybrid.hits, sparse.hits, dense.hits
    for got, want in zip((hybrid, sparse, dense, similar), expected, strict=True):
        assert [(h.paper, h.score, h.dense_score, h.sparse_score) for h in got] == [
            (h.paper, h.score, h.dense_score, h.sparse_score) for h in want]
    assert ids(hybrid)[0] == PAPERS[RARE_AT].id and hybrid[0].sparse_score
    assert PAPERS[3].id not in ids(similar) and len(dense) == 4
    assert isinstance(no_vector, ValueError) and "needs a dense query vector" in str(no_vector)
    assert paper == PAPERS[5]
    assert isinstance(missing, PaperNotFound)
    assert ready == len(PAPERS)


def test_a_scan_of_every_point_lets_searches_run_between_its_pages(
        access: tuple[IndexAccess, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration's scan of every point id ran as one job of the collection's thread: 227 ms
    at 32,000 papers (6-7 s at a million) with every search waiting behind it. Embedded, it
    runs a page per job, searches between; the ids are the same."""
    from papersearch.index import store as store_module

    index, store = access
    monkeypatch.setattr(store_module, "_SCAN_PAGE", 4)  # 30 papers: 8 pages
    done: list[str] = []
    real = type(store)._do

    def recorded(self: Store, step: Any) -> Any:
        done.append(type(step).__name__)
        return real(self, step)

    monkeypatch.setattr(type(store), "_do", recorded)

    async def both() -> tuple[list[str], int]:
        scan = asyncio.ensure_future(index.point_ids())
        searched = 0
        while not scan.done():
            await index.get(PAPERS[searched % len(PAPERS)].id)
            searched += 1
            await asyncio.sleep(0)  # local mode's asyncio client may answer without a pause
        return await scan, searched

    point_ids, searched = run(index, both)
    assert sorted(point_ids) == sorted(p.point_id for p in PAPERS) and searched
    if isinstance(store, EdgeStore):  # a server's scan awaits each page on the loop anyway
        scans = [i for i, name in enumerate(done) if name == "Scan"]
        assert len(scans) == 8 and any(name != "Scan" for name in done[scans[0]:scans[-1]]), \
            done


def test_writes_reach_the_store(access: tuple[IndexAccess, Store]) -> None:
    index, store = access
    extra = replace(PAPERS[0], id="2401.77777", title="an added paper")

    async def calls() -> list[Any]:
        written = await index.upsert([extra, PAPERS[1]], DENSE[:2])
        deleted = await index.delete([PAPERS[2].id, PAPERS[2].id, "2401.99999"])
        # The blocking client (server: the other client of the gateway) sees the writes.
        seen = await asyncio.to_thread(store.count) if isinstance(store, ServerStore) else None
        return [written, deleted, await index.ready(), seen, *await asyncio.gather(
            index.get(extra.id), index.get(PAPERS[2].id), return_exceptions=True)]

    written, deleted, ready, seen, added, gone = run(index, calls)
    assert (written, deleted, ready) == (2, 1, len(PAPERS))  # one added, one deleted
    assert seen == (len(PAPERS) if isinstance(store, ServerStore) else None)
    assert added == extra and isinstance(gone, PaperNotFound)


def test_a_server_write_s_own_work_is_done_off_the_event_loop(
    access: tuple[IndexAccess, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server, a write's BM25 vectors (~80 ms for 64 long abstracts) and its requests are
    built in a worker thread, a search's query terms on the loop (no thread hop per search);
    embedded, the collection's thread does both."""
    index, store = access
    threads: dict[str, set[int]] = {"papers": set(), "query": set(), "requests": set()}

    def recorded(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads[name].add(threading.get_ident())
            return method(*args, **kwargs)
        return call

    monkeypatch.setattr(Bm25Encoder, "papers", recorded("papers", Bm25Encoder.papers))
    monkeypatch.setattr(Bm25Encoder, "query", recorded("query", Bm25Encoder.query))
    monkeypatch.setattr(server_async, "call_for", recorded("requests", server_async.call_for))
    extra = replace(PAPERS[0], id="2401.77777", title="an added paper")

    async def calls() -> tuple[int, int, int]:
        loop = threading.get_ident()
        written = await index.upsert([extra], DENSE[:1])
        await index.retrieve(RARE, DENSE[0], "hybrid", 3, SearchFilter(), feedback=False)
        return loop, written, await index.delete([extra.id])

    loop, written, deleted = run(index, calls)
    assert (written, deleted) == (1, 1)
    assert len(threads["papers"]) == 1 and loop not in threads["papers"]
    if isinstance(store, ServerStore):
        assert threads["query"] == {loop}
        assert loop in threads["requests"] and len(threads["requests"]) > 1  # the search's
    else:
        assert loop not in threads["query"] and not threads["requests"]


@pytest.mark.parametrize("during", ["its BM25", "its request's building"])
def test_a_write_the_collection_closes_under_is_not_ready(
    access: tuple[IndexAccess, Store], monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """A close (the gateway stopping, a migration's end) while a server write's own work runs
    in its worker thread: the write meets a closed store or client and is NotReady
    (UNAVAILABLE: send it again), not an internal error. Embedded, the close waits for the
    write (which builds no requests: the engine takes its steps)."""
    index, store = access
    if during != "its BM25" and not isinstance(store, ServerStore):
        pytest.skip("the embedded engine builds no requests")
    working, go_on = threading.Event(), threading.Event()

    def paused(work: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            working.set()
            go_on.wait(30)
            return work(*args)
        return call

    if during == "its BM25":
        monkeypatch.setattr(Bm25Encoder, "papers", paused(Bm25Encoder.papers))
    else:
        monkeypatch.setattr(server_async, "call_for", paused(server_async.call_for))
    extra = [replace(PAPERS[0], id=f"2402.{n:05d}") for n in range(3)]

    async def calls() -> Any:
        write = asyncio.ensure_future(index.upsert(extra, DENSE[:3]))
        await asyncio.to_thread(working.wait, 30)
        closing = asyncio.ensure_future(index.close())
        await asyncio.sleep(0.1)  # the close runs up to what it waits for
        go_on.set()
        await closing
        return (await asyncio.gather(write, return_exceptions=True))[0]

    answer = asyncio.run(calls())
    if isinstance(store, ServerStore):
        assert isinstance(answer, NotReady), repr(answer)
    else:
        assert answer == len(extra)


def test_indexed_since_through_the_gateway_clients(access: tuple[IndexAccess, Store]) -> None:
    """Saved searches' poll (gateway/watch.py) through each backend's gateway client: what the
    blocking store wrote is scanned, and only what is new is fetched."""
    index, store = access
    extra = replace(PAPERS[0], id="2401.88888", title="written later")

    async def calls() -> list[Any]:
        first = await index.indexed_since(0, None)
        await asyncio.to_thread(store.upsert, [extra], DENSE[:1], SPARSE[:1])
        return [first, await index.indexed_since(0, first.window)]

    first, second = run(index, calls)
    assert len(first.window) == len(PAPERS) and first.papers == []
    assert second.papers == [extra] and second.dense.shape == (1, DIM)
    assert len(second.window) == len(PAPERS) + 1


class AsyncFlaky:
    """An asyncio local-mode client whose ``methods`` fail like an unreachable server,
    ``failures`` times in all; every call to them is counted."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client, self.methods, self.failures = client, set[str](), 0
        self.calls: list[str] = []
        self.then_hang = False  # after the failures: no answer, whatever timeout it was given

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in self.methods:
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.failures > 0:
                self.failures -= 1
                raise ResponseHandlingException(ConnectionRefusedError("connection refused"))
            if self.then_hang:
                await asyncio.sleep(3600)
            return await method(*args, **kwargs)

        return call


@pytest.mark.parametrize("method", ["count", "query_batch_points", "retrieve", "upsert", "delete"])
def test_async_requests_are_retried_once(method: str) -> None:
    store = ServerStore(IndexSettings(), client=QdrantClient(":memory:"))
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS[:5], DENSE[:5], SPARSE[:5])
    flaky = AsyncFlaky(async_twin(store.client))
    engine = AsyncServerEngine(store.settings, flaky)  # type: ignore[arg-type]
    programs = {
        "count": store.probe_program,
        "query_batch_points": lambda: store.query_program(request("dense", limit=3)),
        "retrieve": lambda: store.get_program([PAPERS[0].id]),
        "upsert": lambda: store.upsert_program(PAPERS[:2], DENSE[:2], SPARSE[:2]),
        "delete": lambda: store.delete_program([PAPERS[4].id]),
    }

    async def twice() -> None:
        flaky.methods, flaky.failures = {method}, 1
        await engine.execute(programs[method]())  # the retry answers
        assert flaky.calls == [method, method]
        flaky.calls, flaky.failures = [], 2
        with pytest.raises(StoreUnavailable, match="connection refused"):
            await engine.execute(programs[method]())  # once, not twice
        assert flaky.calls == [method, method]

    asyncio.run(twice())
    store.close()


def test_an_outage_s_retries_are_logged_once_per_reason(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call's failed first try was a WARNING ("retrying once"): with the server down, one
    line per search beside the incident. Now once while the reason holds, and again after a
    call has answered at its first try."""
    from papersearch.index import server

    monkeypatch.setattr(server, "retrying", server.OnChange(server.logger, "qdrant retrying"))
    monkeypatch.setattr(server_async, "retrying", server.retrying)
    store = ServerStore(IndexSettings(), client=QdrantClient(":memory:"))
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS[:5], DENSE[:5], SPARSE[:5])
    flaky = AsyncFlaky(async_twin(store.client))
    engine = AsyncServerEngine(store.settings, flaky)  # type: ignore[arg-type]

    async def searches(outage: int) -> None:
        flaky.methods, flaky.failures = {"query_batch_points"}, 2 * outage
        for _ in range(outage):
            with pytest.raises(StoreUnavailable):
                await engine.execute(store.query_program(request("dense", limit=3)))
        await engine.execute(store.query_program(request("dense", limit=3)))  # back

    def said() -> int:
        return len([r for r in caplog.records if r.getMessage() == "qdrant retrying"])

    asyncio.run(searches(20))
    assert said() == 1
    asyncio.run(searches(3))  # another outage: said again
    assert said() == 2
    store.close()

    store, client = flaky_store()  # the same through the synchronous client
    for outage in (20, 3):
        client.methods, client.failures = {"query_batch_points"}, 2 * outage
        for _ in range(outage):
            with pytest.raises(StoreUnavailable):
                store.execute(store.query_program(request("dense", limit=3)))
        store.execute(store.query_program(request("dense", limit=3)))
    assert said() == 4
    store.close()


@pytest.mark.parametrize("method", ["upsert", "delete"])
def test_an_async_write_retry_ends_within_the_timeout(method: str) -> None:
    """qdrant-client gives an upsert or a delete its whole client timeout, whatever timeout it
    is asked for: a retry the server did not answer took a second index.timeout_s."""
    store = ServerStore(IndexSettings(timeout_s=2), client=QdrantClient(":memory:"))
    store.ensure_collection(DIM, SHA)
    flaky = AsyncFlaky(async_twin(store.client))
    engine = AsyncServerEngine(store.settings, flaky)  # type: ignore[arg-type]
    programs = {"upsert": lambda: store.upsert_program(PAPERS[:2], DENSE[:2], SPARSE[:2]),
                "delete": lambda: store.delete_program([PAPERS[0].id])}
    flaky.methods, flaky.failures, flaky.then_hang = {method}, 1, True

    async def retried() -> None:
        # 1 s left for the retry (2 s, less the pause, in whole seconds); 30 s: it hung
        await asyncio.wait_for(engine.execute(programs[method]()), 30)

    with pytest.raises(StoreUnavailable, match=f"qdrant {method}: the retry had no answer in "
                                                "the 1 s left of index.timeout_s"):
        asyncio.run(retried())
    assert flaky.calls == [method, method]
    store.close()


REQUESTS = {"query_batch_points", "retrieve", "scroll", "upsert", "delete", "count"}


class Counting:
    """IndexAccess's ``make_client`` is ``make``: the real asyncio client, the requests sent
    through it counted: in all (``sent``), out at once (``now``), the most out at once
    (``most``); ``out`` is set as the first goes out."""

    def __init__(self) -> None:
        self.client: AsyncQdrantClient | None = None
        self.now = self.most = self.sent = 0
        self.out = asyncio.Event()

    def make(self, settings: IndexSettings) -> AsyncQdrantClient:
        assert self.client is None, "one client per index access"
        self.client = connect_async(settings)
        return cast(AsyncQdrantClient, self)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in REQUESTS:
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.now, self.sent = self.now + 1, self.sent + 1
            self.most = max(self.most, self.now)
            self.out.set()
            try:
                return await method(*args, **kwargs)
            finally:
                self.now -= 1

        return call


def silent_server_access(port: int, timeout_s: int, requests: Counting) -> IndexAccess:
    """Access to a collection opened on a server that then stops answering (the blocking
    client's open goes to local mode; the asyncio client's requests go to ``port``, counted in
    ``requests``)."""
    settings = Settings(index=IndexSettings(
        backend="server", url=f"http://127.0.0.1:{port}", grpc_port=port, timeout_s=timeout_s))

    def opened_then_silent(s: Settings) -> ServerStore:
        store = ServerStore(s.index, client=QdrantClient(":memory:"))
        store.ensure_collection(DIM, SHA)  # opened; the opener's call then finds it open
        store.client.close()
        store.client = connect(s.index)
        return store

    return IndexAccess(CollectionOpener(settings, DIM, SHA, make_store=opened_then_silent),
                       make_client=requests.make)


def test_concurrent_searches_against_a_silent_server_cost_one_timeout() -> None:
    """Qdrant accepts the connections and never answers: 96 searches at once all fail
    StoreUnavailable in about one ``timeout_s``: not one each, nor one per 16 (the worker
    threads this path had before the asyncio client). Shown by what costs that one timeout:
    all 96 requests are out at once, and none is sent again (the timeout was spent). (It was
    shown by the time it took, under 3 x ``timeout_s``: a bound of the machine's speed.)"""
    timeout_s, n = 2, 96
    requests = Counting()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)  # the kernel accepts connections; nothing ever reads or answers
        index = silent_server_access(silent.getsockname()[1], timeout_s, requests)
        results = run(index, lambda: asyncio.gather(
            *(index.retrieve(RARE, DENSE[i % len(DENSE)], "dense", 5, SearchFilter())
              for i in range(n)), return_exceptions=True))
    assert len(results) == n and all(isinstance(r, StoreUnavailable) for r in results), results
    assert requests.most == n  # 16 worker threads: 16 at a time, 6 x timeout_s in all
    assert requests.sent == n


def test_refused_connection_is_unavailable() -> None:
    """Nobody listens: the search fails StoreUnavailable, not after retries past its timeout:
    its request is sent once, and once more at most (a retry loop would send it for ever)."""
    requests = Counting()
    index = silent_server_access(free_port(), 2, requests)
    (result,) = run(index, lambda: asyncio.gather(
        index.retrieve(RARE, DENSE[0], "dense", 5, SearchFilter()), return_exceptions=True))
    assert isinstance(result, StoreUnavailable), result
    assert 1 <= requests.sent <= 2


def test_a_silent_server_leaves_the_event_loop_free() -> None:
    """While a search waits out its timeout on a server that never answers, the event loop
    keeps running: once its request is out, another task on the loop runs while the search is
    still waiting. A blocking call would hold the loop until the search had failed. (This was
    a ticker's longest gap under half the timeout: a bound of the machine's speed.)"""
    timeout_s = 2
    requests = Counting()

    async def search_beside_another_task(index: IndexAccess) -> tuple[bool, float, Any]:
        started = time.monotonic()
        search = asyncio.ensure_future(
            index.retrieve(RARE, DENSE[0], "dense", 5, SearchFilter()))
        other = asyncio.ensure_future(requests.out.wait())  # runs once the request is out
        await asyncio.wait([search, other], return_when=asyncio.FIRST_COMPLETED)
        free = other.done() and not search.done()
        other.cancel()
        (result,) = await asyncio.gather(search, return_exceptions=True)
        return free, time.monotonic() - started, result

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nothing ever answers
        index = silent_server_access(silent.getsockname()[1], timeout_s, requests)
        free, waited, result = run(index, lambda: search_beside_another_task(index))
    assert isinstance(result, StoreUnavailable), result
    assert waited >= timeout_s * 0.9  # the search did wait out its timeout
    assert free, "the loop was held while the request was out"


def test_calls_queued_when_the_collection_closes_are_not_ready(tmp_path: Path) -> None:
    """A call still waiting for the collection's thread when it closes got CancelledError
    (CANCELLED to its client, which does not resend it; a mirror write escaped its handler)
    where the docstring promises NotReady (UNAVAILABLE: sent again)."""
    settings = IndexSettings(data_dir=tmp_path)
    store = EdgeStore(settings)
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS, DENSE, SPARSE)
    index = IndexAccess(CollectionOpener(Settings(index=settings), DIM, SHA,
                                         make_store=lambda _: store))

    async def close_while_queued() -> list[Any]:
        await index.ready()
        busy = asyncio.ensure_future(index._in_thread(lambda: time.sleep(0.3)))
        queued = asyncio.ensure_future(index.get(PAPERS[0].id))
        await asyncio.sleep(0.05)
        await index.close()
        return await asyncio.gather(busy, queued, return_exceptions=True)

    busy, queued = asyncio.run(close_while_queued())
    assert busy is None and isinstance(queued, NotReady), queued


def test_index_calls_past_the_limit_are_refused_and_readiness_does_not_queue(
    tmp_path: Path,
) -> None:
    """Nothing bounded the calls waiting for the embedded shard's thread: a flood of sparse
    searches (which skip the encoder's bounded queue) waited out their deadlines, and the
    readiness probe queued behind them and turned a busy gateway NOT_SERVING. Past
    serve.max_index_queue a call is now refused at once (Overloaded: RESOURCE_EXHAUSTED),
    and readiness takes a call that answered within the last poll as its proof."""
    settings = IndexSettings(data_dir=tmp_path)
    store = EdgeStore(settings)
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS, DENSE, SPARSE)
    index = IndexAccess(CollectionOpener(
        Settings(index=settings, serve={"max_index_queue": 3}), DIM, SHA,
        make_store=lambda _: store))
    release = threading.Event()

    async def flood() -> list[Any]:
        proof = await index.retrieve(RARE, None, "sparse", 3, SearchFilter())  # answered
        held = asyncio.ensure_future(index._in_thread(release.wait))  # the thread held
        searches = [asyncio.ensure_future(index.retrieve(RARE, None, "sparse", 3,
                                                         SearchFilter())) for _ in range(5)]
        await asyncio.sleep(0.05)
        # not queued behind the searches: the thread is held until this returns, so a
        # readiness that queued could never answer and the wait's timeout fails the test
        await asyncio.wait_for(index.reachable(), 2.0)
        release.set()
        await held
        return [proof, *await asyncio.gather(*searches, return_exceptions=True)]

    try:
        proof, *answers = asyncio.run(flood())
    finally:
        release.set()
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert len(refused) == 2 and "3 index operations running or waiting" in str(refused[0])
    assert [ids(a.hits) for a in answers if a not in refused] == [ids(proof.hits)] * 3
    assert asyncio.run(index.ready()) == len(PAPERS)  # a probe: not counted, never refused


def test_a_close_while_the_collection_opens_leaves_no_client_open(tmp_path: Path) -> None:
    """A call that was opening the collection when the gateway closed it went on: it made the
    asyncio client after the close (nothing closed it) and sent its query."""
    settings = IndexSettings(data_dir=tmp_path)
    store = ServerStore(settings, client=QdrantClient(":memory:"))
    store.ensure_collection(DIM, SHA)
    made: list[IndexSettings] = []
    opening, release = threading.Event(), threading.Event()

    def held_open(create: bool = False) -> Store:  # the call's open: held until the close
        opening.set()
        release.wait(30)
        return store

    def client(settings: IndexSettings) -> AsyncQdrantClient:
        made.append(settings)
        return async_twin(store.client)

    opener = CollectionOpener(Settings(index=settings), DIM, SHA, make_store=lambda _: store)
    index = IndexAccess(opener, make_client=client)  # its first open, at once
    opener.open = held_open  # type: ignore[method-assign]

    async def close_while_opening() -> Any:
        call = asyncio.ensure_future(index.get(PAPERS[0].id))
        while not opening.is_set():
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(index.close())
        await asyncio.sleep(0)  # the close has begun (it waits on the open's thread)
        release.set()
        await closing
        return (await asyncio.gather(call, return_exceptions=True))[0]

    assert isinstance(asyncio.run(close_while_opening()), NotReady)
    assert made == []


def test_a_collection_deleted_while_open_is_let_go_and_made_again_by_a_write(
    tmp_path: Path,
) -> None:
    """The gateway kept the store of a deleted collection: every call failed until a restart
    (UpsertPapers too, which makes a missing collection), and once the directory was made
    again the old shard took writes into the deleted files."""
    import shutil

    from papersearch.index import edge
    from papersearch.index.errors import CollectionMissing

    settings = IndexSettings(data_dir=tmp_path)
    index = IndexAccess(CollectionOpener(Settings(index=settings), DIM, SHA, retry_s=0))

    async def calls() -> tuple[int, int]:
        assert await index.upsert(PAPERS[:3], DENSE[:3]) == 3
        shutil.rmtree(tmp_path / settings.collection)  # a wiped volume
        await asyncio.sleep(edge.ACCESS_CHECK_S)  # past the last passed access check
        with pytest.raises(CollectionMissing):
            await index.ready()  # readiness sees it (NOT_SERVING)
        with pytest.raises(CollectionMissing):
            await index.ready()  # a read never makes it
        written = await index.upsert(PAPERS[3:5], DENSE[3:5])  # a write makes it again
        return written, await index.ready()

    assert run(index, calls) == (2, 2)
    with EdgeStore(settings) as reopened:  # what was written is on disk, in the new files
        reopened.ensure_collection(DIM, SHA, create=False)
        assert reopened.count() == 2

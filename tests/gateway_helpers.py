"""Running real grpc.aio gateways inside tests: an event loop in a thread, servers on free
127.0.0.1 ports (shared by test_gateway.py, test_loadtest.py and the gateway tests over a scratch
index: test_auth.py, test_tls.py, test_fuzz.py and benchmarks/fuzz.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.gateway.server import Gateway
from papersearch.index.errors import StoreUnavailable
from papersearch.index.store import Store
from papersearch.pipeline.backend import Backend, LocalBackend
from papersearch.pipeline.factory import open_index
from papersearch.settings import Settings
from tests.ports import free_port

T = TypeVar("T")

# A drain's grace in tests that show a drain ends by itself within a 60 s hang guard: past the
# guard, so only the drain's own end passes; not an hour, so a failed test's drain ends by
# itself before the module's teardown gives up waiting on it.
DRAIN_GRACE_S = 90.0


class LoopThread:
    """An asyncio loop in a daemon thread: the gateways live there, the tests call in."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Servers:
    """Starts gateways on free 127.0.0.1 ports; stops them all at teardown."""

    def __init__(self, loop: LoopThread, base: Settings) -> None:
        self.loop = loop
        self.base = base
        self.gateways: list[Gateway] = []

    def start(self, backend: Backend, **serve: Any) -> str:
        options = {"grpc_host": "127.0.0.1", "grpc_port": free_port(), "http_port": None,
                   "health_poll_s": 0.2,
                   "rerank_timeout_s": 30.0, **serve}
        settings = self.base.model_copy(
            update={"serve": self.base.serve.model_copy(update=options)}
        )

        async def make() -> Gateway:
            gateway = Gateway(backend, settings)  # the grpc.aio server belongs to this loop
            await gateway.start()
            return gateway

        gateway = self.loop.run(make())
        self.gateways.append(gateway)
        return gateway.address

    def stop(self) -> None:
        """Every gateway drained, each whatever the others did (one still in a failed test's
        drain raised, and the rest, the loop and the index were left running)."""
        failed: list[BaseException] = []
        for gateway in self.gateways:
            try:
                self.loop.run(gateway.drain(0.5))
            except Exception as error:  # noqa: BLE001 (raised below, after the others)
                failed.append(error)
        if failed:
            raise failed[0]


@contextmanager
def scratch_gateways(
    settings: Settings, encoder: Encoder, data_dir: Path, papers: Sequence[Paper] = ()
) -> Iterator[tuple[Servers, LocalBackend, Store]]:
    """A new embedded index in ``data_dir`` holding ``papers``, its in-process backend (no
    reranker) and Servers to start gateways on it; everything is stopped and closed at exit."""
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"data_dir": data_dir})})
    store = open_index(settings, encoder, create=True)
    backend = LocalBackend(encoder, store, None)
    if papers:
        backend.retriever.upsert(papers, encoder.encode_documents([p.text for p in papers]))
    loop = LoopThread()
    servers = Servers(loop, settings)
    try:
        yield servers, backend, store
    finally:
        try:
            servers.stop()
        finally:
            try:
                loop.close()
            finally:
                store.close()


class Switchable(LocalBackend):
    """The real in-process backend (no reranker); ``down`` makes readiness fail, ``delay_s``
    slows every query's encoding; ``polls`` counts readiness asked."""

    def __init__(self, backend: LocalBackend, delay_s: float = 0.0) -> None:
        super().__init__(backend.encoder, backend.store, None)
        self.down = False
        self.delay_s = delay_s
        self.polls = 0

    async def encode_query(self, text: str) -> np.ndarray:
        await asyncio.sleep(self.delay_s)
        return await super().encode_query(text)

    async def ready(self) -> bool:
        self.polls += 1
        if self.down:
            raise StoreUnavailable("index not reachable")
        return await super().ready()

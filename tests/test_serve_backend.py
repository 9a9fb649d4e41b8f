"""The serving backend's own bookkeeping (pipeline/serve_backend.py); its calls through Ray
Serve are tested in tests/test_serving.py and tests/test_migration.py."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from papersearch.models.manifest import ModelRef
from papersearch.pipeline.serve_backend import HandleBackend
from papersearch.settings import Settings


class QueryEncoderHandle:
    """``encode.remote(texts, embedder)`` as the QueryEncoder handle answers it; the first
    call to ``slow`` waits until ``release`` is set."""

    def __init__(self, slow: str) -> None:
        self.encode = self
        self.slow = slow
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    def remote(self, texts: list[str], embedder: str) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self._answer(texts, embedder))

    async def _answer(self, texts: list[str], embedder: str) -> list[np.ndarray]:
        if embedder == self.slow and not self.release.is_set():
            self.started.set()
            await self.release.wait()
        return [np.full(4, len(embedder), dtype=np.float32) for _ in texts]


def test_a_swapped_embedder_s_coalescer_goes_once_idle() -> None:
    """After a migration's swap the old embedder's coalescer goes at the first search that
    finds it idle; while a call is in flight on it, it stays (and answers that call)."""
    old, new = ModelRef("minilm-l6", 1), ModelRef("minilm-cls", 1)
    handle = QueryEncoderHandle(slow=str(old))
    backend = HandleBackend(handle, None, None, Settings())  # type: ignore[arg-type]

    async def searches() -> tuple[set[ModelRef], set[ModelRef], float]:
        busy = asyncio.ensure_future(backend.encode_query_by(old, "a search mid-swap"))
        await handle.started.wait()
        await backend.encode_query_by(new, "the new embedder's first search")
        at_the_swap = set(backend._coalescers)
        handle.release.set()
        vector = await busy
        await backend.encode_query_by(new, "a later search")
        return at_the_swap, set(backend._coalescers), float(vector[0])

    at_the_swap, later, answer = asyncio.run(searches())
    assert at_the_swap == {old, new}
    assert later == {new}
    assert answer == len(str(old))  # the call in flight was answered by its own coalescer

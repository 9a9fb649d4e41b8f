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
        if embedder == self.slow:
            self.started.set()
            await self.release.wait()
        return [np.full(4, len(embedder), dtype=np.float32) for _ in texts]


def test_a_swapped_embedder_s_idle_coalescer_goes_and_a_busy_one_stays() -> None:
    old, new, third = (ModelRef("minilm-l6", 1), ModelRef("minilm-l6", 2),
                       ModelRef("minilm-cls", 1))
    handle = QueryEncoderHandle(slow=str(new))
    backend = HandleBackend(handle, None, None, Settings())  # type: ignore[arg-type]

    async def searches() -> tuple[set[ModelRef], set[ModelRef], set[ModelRef], float]:
        await backend.encode_query_by(old, "graph neural networks")
        busy = asyncio.ensure_future(backend.encode_query_by(new, "a search mid-swap"))
        await handle.started.wait()
        after_swap = set(backend._coalescers)  # old was idle: gone as new's first search came
        await backend.encode_query_by(third, "another")
        with_one_busy = set(backend._coalescers)  # new's call is still in flight: kept
        handle.release.set()
        vector = await busy
        await backend.encode_query_by(old, "old again")  # made again; the idle ones go
        return after_swap, with_one_busy, set(backend._coalescers), float(vector[0])

    after_swap, with_one_busy, at_the_end, answer = asyncio.run(searches())
    assert after_swap == {new}
    assert with_one_busy == {new, third}
    assert at_the_end == {old}
    assert answer == len(str(new))  # the call in flight was answered by its own coalescer

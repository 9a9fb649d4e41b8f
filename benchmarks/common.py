"""What the serving benchmarks share: the query list, prerequisites, and starting the app."""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ports.py

from papersearch.client import AsyncSearchClient, SearchClient  # noqa: E402
from papersearch.corpus.readers import read_corpus  # noqa: E402
from papersearch.models.manifest import model_dir  # noqa: E402
from papersearch.pipeline.query import SearchQuery, SearchResult  # noqa: E402
from papersearch.settings import Settings  # noqa: E402
from tests.ports import free_port  # noqa: E402, F401 (the benchmarks' ports: see there)

TITLE_WORDS = 6


class Unavailable(RuntimeError):
    """A missing prerequisite (index, models, corpus): reported in one line, exit 2."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_queries(corpus_dir: Path, count: int, seed: int) -> list[str]:
    """``count`` queries: the first words of each title, shuffled, cycled if needed
    (the measured ones first, the warm-up ones after them)."""
    if not corpus_dir.exists():
        raise Unavailable(f"corpus {corpus_dir} does not exist (set PAPERSEARCH_CORPUS_DIR)")
    titles = {" ".join(p.title.split()[:TITLE_WORDS]) for p in read_corpus(corpus_dir)}
    queries = sorted(t for t in titles if t.strip())
    if not queries:
        raise Unavailable(f"no paper titles in {corpus_dir}")
    random.Random(seed).shuffle(queries)
    return [queries[i % len(queries)] for i in range(count)]


def check_prerequisites(settings: Settings) -> None:
    models = settings.models
    names = [models.embedder_name] + ([models.reranker_name]
                                      if settings.search.rerank_enabled else [])
    for name in names:
        try:
            model_dir(models.repository, name)
        except Exception as error:
            raise Unavailable(f"{error} (or `make run`)") from None
    if settings.index.backend == "embedded":
        shard = settings.index.data_dir / settings.index.collection
        if not shard.is_dir():
            raise Unavailable(f"no index at {shard}: run `papersearch ingest` (or `make run`)")


def cpu_steal() -> Callable[[], float | None]:
    """A clock of the hypervisor's steal: the returned function gives the share of this
    machine's CPU time given to other guests since ``cpu_steal()`` was called (/proc/stat),
    None where the kernel does not say."""
    def read() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        return (fields[7], sum(fields)) if len(fields) == 8 else None

    start = read()

    def share() -> float | None:
        now = read()
        if start is None or now is None or now[1] == start[1]:
            return None
        return round((now[0] - start[0]) / (now[1] - start[1]), 4)

    return share


def replica_overrides(settings: Settings, port: int) -> dict[str, Any]:
    """What the replicas must agree on with the in-process run (env reaches them as well)."""
    return {
        "models": settings.models.model_dump(mode="json"),
        "search": settings.search.model_dump(mode="json"),
        "index": settings.index.model_dump(mode="json", exclude={"api_key"}),
        "serve": {"grpc_port": port, "http_port": None},
    }


@contextmanager
def local_ray(prefix: str = "ray-") -> Iterator[Path]:
    """A short scratch folder for a local Ray instance (its socket paths are length-limited)
    and whatever else a run keeps there; on the way out, Ray (with the app started in it by
    ``launcher.start``) goes down and the folder is removed."""
    from papersearch.serving import launcher

    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield scratch
    finally:
        launcher.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def wait_serving(client: SearchClient, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.health() == "SERVING":
                return
        except Exception:  # noqa: BLE001 - the port may not be bound yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never reported SERVING")
        time.sleep(0.5)


async def closed_loop(client: AsyncSearchClient, queries: Sequence[str], concurrency: int,
                      end: float, query: Callable[[str], SearchQuery],
                      record: Callable[[SearchResult | None, float, float], None]) -> None:
    """``concurrency`` callers on ``client`` search back to back until ``end``
    (``time.monotonic()``), caller n asking ``query`` of queries n, n + concurrency, ...;
    after each answer ``record(result, started, finished)`` (result None: the call failed)."""
    async def caller(offset: int) -> None:
        i = offset
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                result: SearchResult | None = await client.search(query(queries[i % len(queries)]))
            except Exception:  # noqa: BLE001 - recorded as a failure
                result = None
            record(result, started, time.monotonic())
            i += concurrency

    await asyncio.gather(*(caller(n) for n in range(concurrency)))

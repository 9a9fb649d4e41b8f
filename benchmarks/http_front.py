"""What the HTTP/JSON front costs over gRPC for the same searches, in one run.

    python benchmarks/http_front.py [--requests 300] [--warmup 30] > http_front.json

One in-process gateway (the in-process backend over the sample index that `make run` or
`papersearch ingest` built; no Ray) serves both ports. The same title-word queries (no rerank,
one call in flight) go alternately through the gRPC client and as JSON over one kept-alive HTTP
connection, so both see the same machine noise. Reported: p50 / p90 ms per front, the p50 ratio
and the difference (the HTTP call is transcoded and made once more on the gateway's own gRPC
server over its unix socket).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import threading
import time
from typing import Any

from common import Unavailable, check_prerequisites, free_port, load_queries, log

from papersearch.client import SearchClient
from papersearch.encoder.runtime import Encoder
from papersearch.gateway.server import Gateway
from papersearch.models.manifest import model_dir
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.factory import open_index
from papersearch.pipeline.query import SearchQuery
from papersearch.settings import Settings

SEARCH = "/papersearch.v1.SearchService/Search"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    settings = Settings()
    try:
        check_prerequisites(settings)
    except Unavailable as error:
        log(f"http_front: {error}")
        return 2
    grpc_port, http_port = free_port(), free_port()
    settings = settings.model_copy(update={"serve": settings.serve.model_copy(update={
        "grpc_host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port})})
    encoder = Encoder(model_dir(settings.models.repository, settings.models.embedder_name))
    store = open_index(settings, encoder, create=False)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    gateway = asyncio.run_coroutine_threadsafe(
        _started(LocalBackend(encoder, store, None), settings), loop).result(60)
    queries = load_queries(settings.corpus_dir, args.requests + args.warmup, seed=7)
    try:
        timings = _measure(queries, f"127.0.0.1:{grpc_port}", http_port, args.warmup)
    finally:
        asyncio.run_coroutine_threadsafe(gateway.drain(1.0), loop).result(60)
        store.close()
    grpc_p50, http_p50 = (statistics.median(timings[f]) for f in ("grpc", "http"))
    report: dict[str, Any] = {
        "requests": args.requests,
        "p50_ms": {"grpc": round(grpc_p50, 3), "http": round(http_p50, 3)},
        "p90_ms": {f: round(statistics.quantiles(t, n=10)[-1], 3) for f, t in timings.items()},
        "http_over_grpc_p50": round(http_p50 / grpc_p50, 3),
        "http_extra_ms_p50": round(http_p50 - grpc_p50, 3),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


async def _started(backend: LocalBackend, settings: Settings) -> Gateway:
    gateway = Gateway(backend, settings)  # on the loop it serves from
    await gateway.start()
    return gateway


def _measure(queries: list[str], target: str, http_port: int,
             warmup: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"grpc": [], "http": []}
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
    with SearchClient(target, timeout_s=60) as client:
        for i, query in enumerate(queries):
            for front in ("grpc", "http") if i % 2 else ("http", "grpc"):
                started = time.perf_counter()
                if front == "grpc":
                    ids = [h.paper.id for h in client.search(SearchQuery(query, rerank=False)).hits]
                else:
                    ids = _http_search(connection, query)
                if i >= warmup:
                    timings[front].append((time.perf_counter() - started) * 1000)
            if not ids:
                raise RuntimeError(f"no hits for {query!r}: is the sample index built?")
    connection.close()
    return timings


def _http_search(connection: http.client.HTTPConnection, query: str) -> list[str]:
    connection.request("POST", SEARCH, json.dumps({"query": query, "rerank": False}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body}")
    return [hit["paper"]["paper_id"] for hit in body["hits"]]


if __name__ == "__main__":
    sys.exit(main())

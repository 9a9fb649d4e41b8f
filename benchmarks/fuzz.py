"""Fuzz the gateway with hostile requests for every method; print one JSON report.

    python benchmarks/fuzz.py --count 10000 --seed 1          # an in-process gateway
    python benchmarks/fuzz.py --target 127.0.0.1:50051 --count 2000   # a running service

Without --target it starts the real gRPC gateway over the in-process backend and a scratch
embedded index holding a few papers (the exported embedder from the model repository), and
checks afterwards that the index count is unchanged and a normal search still answers. With
--target (loopback only) it reports the status codes, health and a normal search afterwards.
The requests come from tests/fuzzing.py (structured hostile values, invalid UTF-8 in one string
field, truncated encodings, random bytes; every fuzzed paper breaks a rule).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/fuzzing.py

from papersearch.client import SearchClient  # noqa: E402
from papersearch.loadtest.command import check_target  # noqa: E402
from papersearch.pipeline.query import SearchQuery  # noqa: E402
from papersearch.settings import Settings  # noqa: E402
from tests.fuzzing import KEPT, fuzz  # noqa: E402


def after(target: str) -> dict[str, Any]:
    with SearchClient(target, timeout_s=60) as client:
        hits = client.search(SearchQuery("graph neural networks", rerank=False)).hits
        return {"health": client.health(), "normal_search_hits": len(hits)}


def run_in_process(seed: int, count: int) -> dict[str, Any]:
    from papersearch.encoder.runtime import Encoder
    from tests.gateway_helpers import scratch_gateways

    settings = Settings()
    encoder = Encoder.from_settings(settings.models)
    with tempfile.TemporaryDirectory() as scratch, scratch_gateways(
            settings, encoder, Path(scratch), KEPT) as (servers, backend, store):
        target = servers.start(backend)
        before = store.count()
        started = time.perf_counter()
        report = fuzz(target, seed, count).to_dict()
        report["seconds"] = round(time.perf_counter() - started, 1)
        return report | after(target) | {"index_count_before": before,
                                         "index_count_after": store.count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", help="a running gateway (loopback) instead of in-process")
    args = parser.parse_args()
    if args.target:
        check_target(args.target, allow_remote=False)
        started = time.perf_counter()
        report = fuzz(args.target, args.seed, args.count).to_dict()
        report["seconds"] = round(time.perf_counter() - started, 1)
        report |= after(args.target)
    else:
        report = run_in_process(args.seed, args.count)
    print(json.dumps({"seed": args.seed, **report}, indent=2))


if __name__ == "__main__":
    main()

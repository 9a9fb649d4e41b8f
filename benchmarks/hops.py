"""What one Ray Serve handle hop costs on this machine: the floor under the serving overhead.

    python benchmarks/hops.py [--requests 300] [--warmup 30] > hops.json

A Search through the gateway makes one hop (gateway -> QueryEncoder; it queries the index
itself), so its serving overhead (benchmarks/serving.py) cannot go below one hop plus the gRPC
front. Here a caller replica awaits a no-op method of another replica that returns a
query-sized vector (384 float32), one call in flight, and reports the p50 round trip for:

* transport: handles over gRPC (the Serve config's RAY_SERVE_USE_GRPC_BY_DEFAULT=1) and over
  Ray actor calls (=0), each its own application with the Serve config's other request-path
  settings, in the same Ray instance and run;
* the callee's method: ``async def`` (runs on the replica's event loop) and plain ``def`` (Serve
  hands it to a worker thread);
* and, under Serve, a plain Ray actor's ``async def`` method called from the same caller
  replica (``ray_actor``): what the process and thread wake-ups of a Ray call cost here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import log

from papersearch.serving.launcher import LOCAL_RAY_ENV, load_config
from papersearch.settings import Settings

TRANSPORTS = {"grpc": "1", "actor": "0"}
METHODS = ("async", "sync")


def serve_config_env(settings: Settings) -> dict[str, str]:
    """The request-path environment the Serve config gives the papersearch application."""
    config = load_config(settings.serve.serve_config, Path.cwd())
    app = next(a for a in config.applications if a.name == settings.serve.app_name)
    return dict(app.runtime_env.get("env_vars", {}))


def build(env: dict[str, str], requests: int, warmup: int) -> Any:
    """Caller -> Echo (and Caller -> a plain Ray actor), replicas started with ``env``."""
    import ray
    from ray import serve

    options = {"num_cpus": 0, "runtime_env": {"env_vars": env}}
    quiet = {"enable_access_log": False}  # as in the Serve config

    @serve.deployment(num_replicas=1, ray_actor_options=options, logging_config=quiet)
    class Echo:
        async def echo_async(self, text: str) -> np.ndarray:
            return np.zeros(384, dtype=np.float32)

        def echo_sync(self, text: str) -> np.ndarray:
            return np.zeros(384, dtype=np.float32)

    @ray.remote(num_cpus=0)
    class RawEcho:
        async def echo_async(self, text: str) -> np.ndarray:
            return np.zeros(384, dtype=np.float32)

    @serve.deployment(num_replicas=1, ray_actor_options=options, logging_config=quiet)
    class Caller:
        def __init__(self, echo: Any) -> None:
            self.echo = echo
            self.raw = RawEcho.remote()

        async def measure(self, method: str) -> list[float]:
            call = self.raw.echo_async if method == "raw" else getattr(self.echo, f"echo_{method}")
            latencies = []
            for i in range(warmup + requests):
                start = time.perf_counter()
                await call.remote("a query")
                if i >= warmup:
                    latencies.append((time.perf_counter() - start) * 1000.0)
            return latencies

    return Caller.bind(Echo.bind())


def summarise(latencies: Sequence[float]) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(latencies), [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(statistics.fmean(latencies), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured calls per variant")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up calls per variant")
    args = parser.parse_args(argv)
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    settings = Settings()
    env = serve_config_env(settings)
    temp_dir = tempfile.mkdtemp(prefix="ps-hops-")
    results: dict[str, dict[str, Any]] = {}
    try:
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
                 _temp_dir=temp_dir)
        for transport, flag in TRANSPORTS.items():
            app = build(env | {"RAY_SERVE_USE_GRPC_BY_DEFAULT": flag}, args.requests,
                        args.warmup)
            handle = serve.run(app, name=f"hops-{transport}", route_prefix=None)
            results[transport] = {m: summarise(handle.measure.remote(m).result())
                                  for m in METHODS}
            log(f"{transport}: {results[transport]}")
        raw = summarise(handle.measure.remote("raw").result())
        log(f"ray_actor: {raw}")
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    best = min(r["async"]["p50_ms"] for r in results.values())
    print(json.dumps({
        "requests": args.requests,
        "serve_config_env": env,
        "hop": results,
        "ray_actor": raw,
        "hop_p50_ms": best,
        "note": "a Search makes one hop (QueryEncoder); serving overhead >= one hop + gRPC front",
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

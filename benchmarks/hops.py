"""What one Ray Serve handle hop costs on this machine: the floor under the serving overhead.

    python benchmarks/hops.py [--requests 300] [--warmup 30] > hops.json

A Search through the gateway makes one hop (gateway -> QueryEncoder; it queries the index
itself), so its serving overhead (benchmarks/serving.py) cannot go below one hop plus the gRPC
front. Here a caller replica awaits a no-op method of another replica that returns a
query-sized vector (384 float32), one call in flight, every variant once per round (the
machine's drift hits them alike), and reports the p50 round trip for:

* transport: handles over gRPC (the Serve config's RAY_SERVE_USE_GRPC_BY_DEFAULT=1) and over
  Ray actor calls (=0), each its own application with the Serve config's other request-path
  settings, in the same Ray instance and run;
* the callee's method: ``async def`` (runs on the replica's event loop), plain ``def`` (Serve
  hands it to a worker thread), ``async def`` awaiting a worker thread (``thread``), and an
  ``async def`` behind a batcher with no batch wait: ``serve.batch`` (``serve_batch``) or the
  gateway's Coalescer (``coalesced``), a lone call each time;
* and, under Serve, a plain Ray actor's ``async def`` method called from the same caller
  replica (``ray_actor``): what the process and thread wake-ups of a Ray call cost here.

``hop_p50_ms`` is the ``async def`` p50 over the transport the Serve config sets (``transport``;
Ray's default, actor calls, where it sets none); ``hop_p50_ms_by_transport`` has both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import log

from papersearch.coalesce import Coalescer
from papersearch.local_ray import use_local_ray_env
from papersearch.serving.launcher import load_config
from papersearch.settings import Settings

TRANSPORTS = {"grpc": "1", "actor": "0"}  # RAY_SERVE_USE_GRPC_BY_DEFAULT; Ray's default "0"
METHODS = ("async", "sync", "thread", "serve_batch", "coalesced")


def serve_config_env(settings: Settings) -> dict[str, str]:
    """The request-path environment the Serve config gives the papersearch application."""
    config = load_config(settings.serve.serve_config, Path.cwd(),
                         app_name=settings.serve.app_name)
    app = next(a for a in config.applications if a.name == settings.serve.app_name)
    return dict(app.runtime_env.get("env_vars", {}))


def configured_transport(env: dict[str, str]) -> str:
    """The handles' transport under the Serve config's env (TRANSPORTS' key)."""
    flag = env.get("RAY_SERVE_USE_GRPC_BY_DEFAULT", TRANSPORTS["actor"])
    return "grpc" if flag == TRANSPORTS["grpc"] else "actor"


def vector() -> np.ndarray:
    return np.zeros(384, dtype=np.float32)  # a query embedding's size


def build(env: dict[str, str], requests: int, warmup: int) -> Any:
    """Caller -> Echo (and Caller -> a plain Ray actor), replicas started with ``env``."""
    import ray
    from ray import serve

    options = {"num_cpus": 0, "runtime_env": {"env_vars": env}}
    quiet = {"enable_access_log": False}  # as in the Serve config

    @serve.deployment(num_replicas=1, ray_actor_options=options, logging_config=quiet)
    class Echo:
        def __init__(self) -> None:
            self.coalescer: Coalescer[str, np.ndarray] = Coalescer(
                "Echo", self._many, max_batch=32, max_in_flight=1, max_pending=512)

        async def echo_async(self, text: str) -> np.ndarray:
            return vector()

        def echo_sync(self, text: str) -> np.ndarray:
            return vector()

        async def echo_thread(self, text: str) -> np.ndarray:
            return await asyncio.to_thread(vector)

        async def echo_serve_batch(self, text: str) -> np.ndarray:
            return await self._serve_batch(text)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
        async def _serve_batch(self, texts: list[str]) -> list[np.ndarray]:
            return [vector() for _ in texts]

        async def echo_coalesced(self, text: str) -> np.ndarray:
            return await self.coalescer.submit(text)

        async def _many(self, texts: list[str]) -> list[np.ndarray]:
            return [vector() for _ in texts]

    @ray.remote(num_cpus=0)
    class RawEcho:
        async def echo_async(self, text: str) -> np.ndarray:
            return vector()

    @serve.deployment(num_replicas=1, ray_actor_options=options, logging_config=quiet)
    class Caller:
        def __init__(self, echo: Any) -> None:
            self.echo = echo
            self.raw = RawEcho.remote()  # type: ignore[attr-defined]  # @ray.remote

        async def measure(self, methods: Sequence[str]) -> dict[str, list[float]]:
            """Every method once per round (drift on a noisy machine hits them alike)."""
            calls = {m: self.raw.echo_async if m == "raw" else getattr(self.echo, f"echo_{m}")
                     for m in methods}
            latencies: dict[str, list[float]] = {m: [] for m in methods}
            for i in range(warmup + requests):
                for method, call in calls.items():
                    start = time.perf_counter()
                    await call.remote("a query")
                    if i >= warmup:
                        latencies[method].append((time.perf_counter() - start) * 1000.0)
            return latencies

    return Caller.bind(Echo.bind())  # type: ignore[attr-defined]  # @serve.deployment


def summarise(latencies: Sequence[float]) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(latencies), [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(statistics.fmean(latencies), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured calls per variant")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up calls per variant")
    args = parser.parse_args(argv)
    use_local_ray_env()
    import ray
    from ray import serve

    settings = Settings()
    env = serve_config_env(settings)
    temp_dir = tempfile.mkdtemp(prefix="ps-hops-")
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, float] = {}
    try:
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
                 _temp_dir=temp_dir)
        for transport, flag in TRANSPORTS.items():
            app = build(env | {"RAY_SERVE_USE_GRPC_BY_DEFAULT": flag}, args.requests,
                        args.warmup)
            handle = serve.run(app, name=f"hops-{transport}", route_prefix=None)
            methods = [*METHODS, "raw"] if transport == "grpc" else list(METHODS)
            measured = handle.measure.remote(methods).result()
            if "raw" in measured:
                raw = summarise(measured.pop("raw"))
                log(f"ray_actor: {raw}")
            results[transport] = {m: summarise(values) for m, values in measured.items()}
            log(f"{transport}: {results[transport]}")
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    by_transport = {t: r["async"]["p50_ms"] for t, r in results.items()}
    configured = configured_transport(env)
    print(json.dumps({
        "requests": args.requests,
        "serve_config_env": env,
        "hop": results,
        "ray_actor": raw,
        "transport": configured,
        "hop_p50_ms": by_transport[configured],
        "hop_p50_ms_by_transport": by_transport,
        "note": "a Search makes one hop (QueryEncoder); serving overhead >= one hop + gRPC front",
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

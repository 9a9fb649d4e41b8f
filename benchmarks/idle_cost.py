"""What the served app costs the machine while no search arrives, by Serve controller interval.

    python benchmarks/idle_cost.py [--intervals 0.1 0.5] [--rounds 2] [--seconds 30]

The app is started as `papersearch serve` starts it (the Serve config, the local Ray instance,
the sample index), once per interval and round, the intervals alternating (a shared machine
drifts); after it reports SERVING and a settling pause, the CPU time of every process of the
Ray instance is read over ``--seconds`` with no load: per role (each deployment's replicas,
the Serve controller, the rest of Ray's processes), as a share of one core. Ray is taken down
between runs: the controller reads its interval (serve.control_loop_interval_s, exported by
the launcher as RAY_SERVE_CONTROL_LOOP_INTERVAL_S) when it starts. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import psutil
from common import (
    Unavailable,
    check_prerequisites,
    free_port,
    local_ray,
    log,
    wait_serving,
)
from throughput import CpuMeter

from papersearch.client import SearchClient
from papersearch.serving import launcher
from papersearch.settings import Settings

CONTROLLER = "ray::ServeController"


class IdleMeter(CpuMeter):
    """throughput.py's meter with the Serve controller apart from the rest of Ray."""

    def role(self, process: psutil.Process) -> tuple[str, str]:
        role, name = super().role(process)
        if role != "ray":
            return role, name
        try:
            controller = " ".join(process.cmdline()).startswith(CONTROLLER)
        except psutil.Error:
            return role, name
        return ("controller", name) if controller else (role, name)


def idle_share(settings: Settings, interval: float, seconds: float, settle_s: float
               ) -> dict[str, float]:
    """Per role, the share of one core the idle app's processes used (this one excluded)."""
    port = free_port()
    serve = settings.serve.model_copy(update={
        "grpc_port": port, "http_port": None, "control_loop_interval_s": interval,
        "metrics_port": free_port(), "dashboard_port": free_port()})
    run_settings = settings.model_copy(update={"serve": serve})
    with local_ray() as temp_dir:
        launcher.start(run_settings, num_cpus=serve.num_cpus, temp_dir=temp_dir,
                       overrides={"serve": {"grpc_port": port, "http_port": None}})
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            wait_serving(client)
        time.sleep(settle_s)
        meter = IdleMeter(serve.app_name)
        meter.start()
        time.sleep(seconds)
        meter.stop()
    used: dict[str, float] = {}
    for (role, _), cpu_s in meter.used.items():
        if role != "load_generator":  # this process
            used[role] = used.get(role, 0.0) + cpu_s
    shares = {role: round(s / seconds, 4) for role, s in sorted(used.items())}
    return {**shares, "total": round(sum(used.values()) / seconds, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured idle window")
    parser.add_argument("--settle-s", type=float, default=15.0,
                        help="pause after SERVING before measuring (start-up work ends)")
    args = parser.parse_args()
    settings = Settings()
    try:
        check_prerequisites(settings)
    except Unavailable as error:
        print(f"idle cost benchmark: {error}", file=sys.stderr)
        return 2
    runs: dict[float, list[dict[str, float]]] = {i: [] for i in args.intervals}
    for round_ in range(args.rounds):
        for interval in args.intervals:
            runs[interval].append(idle_share(settings, interval, args.seconds, args.settle_s))
            log(f"round {round_ + 1}, interval {interval} s: {runs[interval][-1]}")
    summary: dict[str, Any] = {
        str(interval): {"median_total_core_share": round(statistics.median(
            r["total"] for r in found), 4), "runs": found}
        for interval, found in runs.items()}
    print(json.dumps({"cpus": psutil.cpu_count(), "seconds": args.seconds,
                      "settle_s": args.settle_s, "by_interval_s": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

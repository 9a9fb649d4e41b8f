"""Adaptive vs fixed rerank depth under the same offered load, through the real Serve app.

    python benchmarks/adaptive_rerank.py [--steps 0.5:20,3:60,0.5:20] [--out docs/rerank_depth]

Once per policy (``search.rerank_adaptive`` true, then false): `papersearch serve` on the
sample index (``index.data_dir``) with the rerank stage on and the Reranker pinned at one
replica (a copy of the Serve config without its autoscaling range, so both runs have the same
capacity), then `papersearch loadtest` with the same step profile (searches/s) and seed, then
the service stopped. Writes each run's load-test report under OUT/<policy>/, one plot of both
(p99 latency and the share of searches reranked, per second) as OUT/adaptive-vs-fixed.png, and
prints JSON: per policy the totals, the reranked share, p50/p99 and the rerank windows used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import log
from faults import ROOT, Service

from papersearch.settings import Settings

POLICIES = {"adaptive": True, "fixed": False}


def pinned_config(source: Path, target: Path) -> Path:
    """The Serve config with the Reranker at exactly one replica."""
    config = yaml.safe_load(source.read_text())
    for app in config["applications"]:
        for deployment in app["deployments"]:
            if deployment["name"] == "Reranker":
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = 1
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def run_policy(name: str, adaptive: bool, args: argparse.Namespace, scratch: Path,
               config: Path) -> dict[str, Any]:
    ray_dir = Path(tempfile.mkdtemp(prefix="ar", dir="/tmp"))  # Ray's sockets: short paths
    service = Service(Settings().index.data_dir.resolve(), scratch / name, rerank=True,
                      app="papersearch", num_cpus=args.num_cpus, ray_dir=ray_dir)
    (scratch / name).mkdir(parents=True, exist_ok=True)
    env_extra = {"PAPERSEARCH_SEARCH__RERANK_ADAPTIVE": "true" if adaptive else "false",
                 "PAPERSEARCH_SERVE__SERVE_CONFIG": str(config)}
    original_env = service.env
    service.env = lambda: original_env() | env_extra  # type: ignore[method-assign]
    service.start()
    try:
        log(f"{name}: SERVING after {service.wait_serving()} s")
        out = args.out / name
        command = [sys.executable, "-m", "papersearch.cli", "loadtest", "--target",
                   service.target, "--steps", args.steps, "--seed", str(args.seed),
                   "--deadline-s", "10", "--max-in-flight", "64", "--out", str(out),
                   "--status-url", f"http://127.0.0.1:{service.dashboard_port}",
                   "--metrics-url", f"http://127.0.0.1:{service.metrics_port}/metrics"]
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    finally:
        service.kill()
        shutil.rmtree(ray_dir, ignore_errors=True)
    report: dict[str, Any] = json.loads((out / "loadtest.json").read_text())
    return report


def plot(reports: dict[str, dict[str, Any]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, share) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, report in reports.items():
        rows = report["seconds"]
        t = [row["t_s"] for row in rows]
        latency.plot(t, [row["latency_ms"]["p99"] for row in rows], label=name)
        share.plot(t, [row["reranked"] / row["ok"] if row["ok"] else None for row in rows],
                   label=name)
    latency.set_ylabel("p99 latency per second (ms)")
    share.set_ylabel("share of searches reranked")
    share.set_xlabel("seconds")
    latency.legend()
    latency.set_title("Rerank window: adaptive vs fixed, same offered load")
    figure.tight_layout()
    figure.savefig(target, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0.5:20,3:60,0.5:20",
                        help="the load test's rate:seconds steps (searches/s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "rerank_depth")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="adaptive-rerank-") as tmp:
        scratch = Path(tmp)
        config = pinned_config(ROOT / Settings().serve.serve_config, scratch / "serve.yaml")
        for name, adaptive in POLICIES.items():
            reports[name] = run_policy(name, adaptive, args, scratch, config)
    plot(reports, args.out / "adaptive-vs-fixed.png")
    print(json.dumps({"steps": args.steps, "seed": args.seed, "policies": {
        name: {key: report["summary"][key] for key in (
            "scheduled", "ok", "errors", "achieved_qps", "latency_ms", "reranked_ratio",
            "rerank_depths")}
        for name, report in reports.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

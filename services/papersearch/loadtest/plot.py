"""One PNG: latency, QPS and replicas on a shared time axis, step boundaries marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from papersearch.loadtest.monitor import ReplicaSample
from papersearch.loadtest.stats import PERCENTILES, SecondRow


def plot_run(path: Path, title: str, seconds: Sequence[SecondRow],
             samples: Sequence[ReplicaSample], boundaries_s: Sequence[float]) -> None:
    figure = Figure(figsize=(11, 8.5), layout="constrained")
    latency, qps, replicas = figure.subplots(3, 1, sharex=True)
    t = [row.t_s + 0.5 for row in seconds]  # a bucket's value drawn mid-second

    for q in PERCENTILES:
        values = [row.latency_ms[f"p{q}"] for row in seconds]
        latency.plot(t, [math.nan if v is None else v for v in values], marker=".",
                     label=f"p{q}")
    latency.set_ylabel("latency (ms, OK)")
    latency.set_ylim(bottom=0)

    edges = [*(row.t_s for row in seconds), len(seconds)]  # one bucket a second
    qps.stairs([row.offered for row in seconds], edges, label="offered", color="grey",
               linewidth=2)
    qps.stairs([row.ok for row in seconds], edges, label="achieved (OK)", color="tab:blue",
               linewidth=2)
    qps.stairs([sum(row.errors.values()) + row.not_sent + row.cancelled for row in seconds],
               edges, label="errors, not sent, cancelled", color="tab:red", fill=True,
               alpha=0.5)
    qps.set_ylabel("requests / s")

    good = [s for s in samples if s.error is None]
    names = sorted({name for s in good for name in s.deployments})
    for i, name in enumerate(names):
        nudge = (i - (len(names) - 1) / 2) * 0.04  # equal counts stay visible side by side
        points = [(s.t_s, s.deployments[name].running) for s in good if name in s.deployments]
        points.append((len(seconds), points[-1][1]))  # the last count holds to the end
        replicas.step([p[0] for p in points], [p[1] + nudge for p in points], where="post",
                      label=name, linewidth=2)
    if not good:
        reason = samples[0].error if samples else "not sampled"
        replicas.text(0.5, 0.5, f"replicas unknown: {reason}", ha="center", va="center",
                      transform=replicas.transAxes, wrap=True)
    replicas.set_ylabel("RUNNING replicas (nudged)")
    replicas.set_ylim(bottom=0)
    replicas.yaxis.get_major_locator().set_params(integer=True)
    replicas.set_xlabel("seconds since start")

    for axes in (latency, qps, replicas):
        for boundary in boundaries_s:
            axes.axvline(boundary, color="black", linestyle=":", linewidth=1)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)

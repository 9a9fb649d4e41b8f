"""An embedder migration under load, through the real service and the real CLI.

    python benchmarks/migration.py [--out docs/migration] [--searchers 2] [--phase-s 10]

`papersearch serve` on a copy of the sample index (``index.data_dir``; the original is not
touched), searched and written over gRPC the whole time: ``--searchers`` clients send dense
probe searches back to back (the titles of the top papers for a fixed query: concurrent writes,
papers about bread, cannot change their answers), one client upserts two papers and deletes
one every fourth call. After ``--phase-s`` seconds `papersearch index migrate --embedder
minilm-cls` runs (MiniLM exported again with CLS pooling: another model, other rankings), then
``--rollback``, then ``--finish``, each after ``--phase-s`` seconds more. Every probe answer is
classified as the old embedder's list, the new one's, or neither (mixed); every acknowledged
write is read back at the end. Prints the JSON and writes it with a plot to OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from common import check_prerequisites, log
from faults import ROOT, Service

from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.modelbuild.prepare import export_cls_variant
from papersearch.pipeline.query import SearchQuery
from papersearch.settings import Settings

NEW = "minilm-cls"
PROBE_QUERY = "retrieval augmented generation with large language models"
PROBES = 8
STEPS = (("migrate", ["--embedder", NEW]), ("rollback", ["--rollback"]),
         ("finish", ["--finish"]))


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # seconds since the load started
    kind: str  # search | write
    ms: float
    ok: bool
    probe: int = -1
    answer: tuple[str, ...] = ()


def bread(n: int) -> Paper:
    return Paper(id=f"bread-{n}", title=f"Sourdough bread, bake number {n}",
                 abstract="Flour, water and salt rested overnight, then baked in a hot oven.")


class Load:
    def __init__(self, target: str, probes: list[str], started: float) -> None:
        self.target, self.probes, self.started = target, probes, started
        self.events: list[Event] = []
        self.kept: set[str] = set()
        self.deleted: set[str] = set()
        self.stop = threading.Event()

    def ask(self, client: SearchClient, probe: int) -> tuple[str, ...]:
        query = SearchQuery(self.probes[probe], mode="dense", rerank=False)
        return tuple(h.paper.id for h in client.search(query).hits)

    def searching(self, offset: int) -> None:
        with SearchClient(self.target, timeout_s=30) as client:
            n = offset
            while not self.stop.is_set():
                begun = time.monotonic()
                try:
                    answer, ok = self.ask(client, n % PROBES), True
                except grpc.RpcError as error:
                    answer, ok = (f"{error.code().name}: {error.details()}",), False
                self.events.append(Event(begun - self.started, "search",
                                         (time.monotonic() - begun) * 1000, ok, n % PROBES,
                                         answer))
                n += 1

    def writing(self) -> None:
        with SearchClient(self.target, timeout_s=30) as client:
            n = 0
            while not self.stop.is_set():
                begun = time.monotonic()
                batch = [bread(n), bread(n + 1)]
                try:
                    client.upsert(batch)
                    self.kept.update(p.id for p in batch)
                    if n % 8 == 0:
                        client.delete([batch[0].id])
                        self.kept.discard(batch[0].id)
                        self.deleted.add(batch[0].id)
                    ok = True
                except grpc.RpcError:
                    ok = False
                self.events.append(Event(begun - self.started, "write",
                                         (time.monotonic() - begun) * 1000, ok))
                n += 2
                time.sleep(0.05)


def cli(service: Service, args: list[str]) -> tuple[dict[str, Any], float]:
    begun = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "papersearch.cli", "index", "migrate", *args],
                          cwd=ROOT, env=service.env(), capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"index migrate {' '.join(args)}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout), time.monotonic() - begun


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2)}


def summarise(load: Load, marks: dict[str, tuple[float, float]], before: list[tuple[str, ...]],
              after: list[tuple[str, ...]], missing: list[str], resurrected: list[str]
              ) -> dict[str, Any]:
    def classify(event: Event) -> str:
        if not event.ok:
            return "failed"
        if event.answer == before[event.probe]:
            return "old"
        return "new" if event.answer == after[event.probe] else "mixed"

    bounds = [0.0, marks["migrate"][0], marks["migrate"][1], marks["rollback"][1],
              marks["finish"][1], float("inf")]
    names = ["before", "migrating", "swapped", "rolled back", "finished"]
    searches = [e for e in load.events if e.kind == "search"]
    writes = [e for e in load.events if e.kind == "write"]
    phases = {}
    for name, low, high in zip(names, bounds, bounds[1:], strict=False):
        inside = [e for e in searches if low <= e.at < high]
        counts = {c: sum(classify(e) == c for e in inside) for c in
                  ("old", "new", "mixed", "failed")}
        phases[name] = {"searches": counts, **percentiles([e.ms for e in inside if e.ok]),
                        "writes_failed": sum(not e.ok for e in writes if low <= e.at < high)}
    return {
        "searches": len(searches),
        "failed_searches": sum(not e.ok for e in searches),
        "mixed_answers": sum(classify(e) == "mixed" for e in searches),
        "probes_ranked_differently": sum(b != a for b, a in zip(before, after, strict=True)),
        "writes": len(writes), "failed_writes": sum(not e.ok for e in writes),
        "papers_acknowledged": len(load.kept), "lost_writes": missing,
        "deleted_but_present": resurrected, "phases": phases,
    }


def plot(load: Load, marks: dict[str, tuple[float, float]], before: list[tuple[str, ...]],
         after: list[tuple[str, ...]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.5))
    colours = {"old": "tab:blue", "new": "tab:orange", "mixed": "red", "failed": "black"}
    for label, colour in colours.items():
        points = [e for e in load.events if e.kind == "search" and (
            (label == "failed" and not e.ok) or (e.ok and label == (
                "old" if e.answer == before[e.probe] else
                "new" if e.answer == after[e.probe] else "mixed")))]
        if points:
            axis.scatter([e.at for e in points], [e.ms for e in points], s=4, c=colour,
                         label=f"search answered by the {label} embedder" if label in
                         ("old", "new") else f"{label} ({len(points)})")
    writes = [e for e in load.events if e.kind == "write"]
    axis.scatter([e.at for e in writes], [e.ms for e in writes], s=4, c="tab:gray",
                 marker="x", label="write (upsert + delete)")
    for name, (begun, ended) in marks.items():
        axis.axvspan(begun, ended, color="tab:green", alpha=0.12)
        axis.text(begun, axis.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    axis.set_yscale("log")
    axis.set_xlabel("seconds")
    axis.set_ylabel("latency (ms)")
    axis.set_title("papersearch index migrate under load: searches never fail or mix embedders")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7,
                markerscale=3)
    figure.tight_layout()
    figure.savefig(target, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "migration")
    parser.add_argument("--searchers", type=int, default=2)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    settings = Settings()
    check_prerequisites(settings)
    log(f"exported {export_cls_variant(settings, NEW)}")
    scratch = Path(tempfile.mkdtemp(prefix="migration-"))
    ray_dir = Path(tempfile.mkdtemp(prefix="mg", dir="/tmp"))  # Ray's sockets: short paths
    shutil.copytree(settings.index.data_dir.resolve(), scratch / "index")
    service = Service(scratch / "index", scratch, rerank=False, app="papersearch",
                      num_cpus=args.num_cpus, ray_dir=ray_dir)
    service.start()
    marks: dict[str, tuple[float, float]] = {}
    reports: dict[str, Any] = {}
    try:
        log(f"SERVING after {service.wait_serving()} s")
        with SearchClient(service.target, timeout_s=30) as client:
            probes = [h.paper.title for h in client.search(SearchQuery(
                PROBE_QUERY, mode="dense", rerank=False, top_k=PROBES)).hits]
            load = Load(service.target, probes, time.monotonic())
            before = [load.ask(client, i) for i in range(PROBES)]
            threads = [threading.Thread(target=load.searching, args=(i,))
                       for i in range(args.searchers)] + [threading.Thread(target=load.writing)]
            for thread in threads:
                thread.start()
            after: list[tuple[str, ...]] = []
            try:
                for name, step in STEPS:
                    time.sleep(args.phase_s)
                    begun = time.monotonic() - load.started
                    log(f"{name} ...")
                    reports[name], seconds = cli(service, step)
                    marks[name] = (begun, begun + seconds)
                    log(f"{name}: {seconds:.1f} s")
                    if name == "migrate":
                        after = [load.ask(client, i) for i in range(PROBES)]
                time.sleep(args.phase_s)
            finally:
                load.stop.set()
                for thread in threads:
                    thread.join(timeout=60)
            missing, resurrected = [], []
            for pid in sorted(load.kept | load.deleted):
                try:
                    client.get(pid)
                    if pid in load.deleted:
                        resurrected.append(pid)
                except grpc.RpcError as error:
                    if pid in load.kept or error.code() != grpc.StatusCode.NOT_FOUND:
                        missing.append(f"{pid}: {error.code().name}")
    finally:
        service.kill()
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"searchers": args.searchers, "phase_s": args.phase_s, "num_cpus": args.num_cpus,
              "steps": {name: {**reports[name], "command_s": round(marks[name][1]
                                                                  - marks[name][0], 2)}
                        for name in reports},
              **summarise(load, marks, before, after, missing, resurrected)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "migration.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(load, marks, before, after, args.out / "migration.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

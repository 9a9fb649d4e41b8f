"""Faults under load: kills, drain, index outage, writes under failure, soak; one JSON report.

    python benchmarks/faults.py                                  # every scenario (~20 min)
    python benchmarks/faults.py --scenario kill_encoder --scenario drain_restart --rate 5
    python benchmarks/faults.py --scenario soak --soak-s 120 --out faults.json

Each scenario starts its own `papersearch serve` (own process group, private Ray temp dir, free
gRPC/dashboard/metrics ports on loopback, a scratch copy of an index that `papersearch ingest`
fills once from corpus_dir) and drives it with two `papersearch loadtest` processes at once, one
with client retries (``--retry --wait-for-ready``) and one without (``--no-retry``), each at
``--rate`` searches/s.
The fault comes ``--before-s`` seconds into the load; "during" is the ``--window-s`` seconds after
it (longer if recovery takes longer), "after" the rest. Per client: requests sent, failures by
status code, p99 of OK answers before/during/after (by send time), the first OK answer sent after
the fault and the last failure; per scenario: recovery times, RSS of every process of the
service (driver, Gateway and each replica, Serve controller, raylet, GCS) at start and end, and
acknowledged writes lost. Scenarios:

- kill_encoder, kill_reranker, kill_index_owner: SIGKILL one replica (kill_reranker: rerank
  load, needs a reranker model in models.repository; kill_index_owner: the Gateway replica, which
  owns the embedded index and is the gRPC front too);
  recovery = the Serve status API shows the deployment's replicas RUNNING again.
- drain_restart: SIGTERM to `papersearch serve` (rerank load beside the searches so requests are
  in flight): every request in flight at the signal must finish OK; then a new serve on the same
  data, timed to health SERVING and to its first OK search.
- index_outage_embedded: the index data directory chmod 000, then back; the service runs as an
  unprivileged user (root ignores permission bits). Health and the Gateway's pid are polled.
- index_outage_server: a Qdrant server that stops answering; reported as skipped when no
  ``qdrant`` binary is on PATH.
- upsert_kill: an acknowledged stream, then SIGKILL of the Gateway replica (the index owner) in
  the middle of a second stream (what a failed stream reports as committed is
  checked with GetPaper), resend after recovery, again (idempotent), SIGKILL of the whole
  service right after that acknowledgement; count and ids are then read from the shard itself.
- soak: ``--soak-s`` (600) at ``--soak-rate``, RSS sampled every 10 s; growth over the last 5
  minutes (the last half of a shorter soak).

The load generators run `papersearch loadtest` through this file (``_loadgen``), which records
every request (send, answer, code) and the run's clock origin besides the usual loadtest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ports.py

from tests.ports import free_port  # noqa: E402 (ports below the kernel's ephemeral range)

PAPERSEARCH = [sys.executable, "-m", "papersearch.cli"]
SCENARIOS = ("kill_encoder", "kill_reranker", "kill_index_owner", "drain_restart",
             "index_outage_embedded", "index_outage_server", "upsert_kill", "soak")
QUICK = tuple(s for s in SCENARIOS if s != "soak")
REPLICA_TITLE = "ServeReplica:{app}:{deployment}"
UNPRIVILEGED = 65534  # nobody
SERVING_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 120.0
RSS_SAMPLE_S = 10.0
UPSERT_RECOVERY_ALLOWANCE_S = 30.0
MB = 1024 * 1024


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- pure numbers from request records --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One load-test request, times in seconds on the wall clock (time.time())."""

    scheduled: float
    sent: float | None  # None: not sent (in-flight cap)
    ended: float | None
    code: str | None  # "OK", a gRPC status name, CLIENT_ERROR; None: not sent or cancelled
    reranked: bool | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.sent is None or self.ended is None:
            return None
        return (self.ended - self.sent) * 1000.0


def p99(values: Sequence[float]) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * 0.99
    low = int(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def window_stats(requests: Sequence[Request]) -> dict[str, Any]:
    """Sent, OK, failures by code, p99 of OK answers (ms), share reranked."""
    sent = [r for r in requests if r.sent is not None]
    ok = [r for r in sent if r.code == "OK"]
    failed = Counter("CANCELLED_BY_CLIENT" if r.code is None else r.code
                     for r in sent if r.code != "OK")
    latencies = [r.latency_ms for r in ok if r.latency_ms is not None]
    value = p99(latencies)
    reranked = [r.reranked for r in ok if r.reranked is not None]
    return {
        "sent": len(sent), "ok": len(ok), "failed": dict(sorted(failed.items())),
        "not_sent": len(requests) - len(sent),
        "p99_ms": None if value is None else round(value, 1),
        "reranked": round(sum(reranked) / len(reranked), 3) if reranked else None,
    }


def split_windows(requests: Sequence[Request], fault: float, during_end: float,
                  ) -> dict[str, list[Request]]:
    """By send (scheduled, for unsent) time: before the fault, up to ``during_end``, after."""
    windows: dict[str, list[Request]] = {"before": [], "during": [], "after": []}
    for r in requests:
        t = r.sent if r.sent is not None else r.scheduled
        name = "before" if t < fault else "during" if t < during_end else "after"
        windows[name].append(r)
    return windows


def recovery(requests: Sequence[Request], fault: float) -> dict[str, float | None]:
    """Seconds from the fault to: the first OK answer to a request sent after it, the end of
    the last failed request (None: none failed after the fault)."""
    first_ok = min((r.ended for r in requests if r.code == "OK" and r.sent is not None
                    and r.sent >= fault and r.ended is not None), default=None)
    last_failure = max((r.ended for r in requests if r.sent is not None and r.code != "OK"
                        and r.ended is not None and r.ended >= fault), default=None)
    return {
        "first_ok_after_fault_s": None if first_ok is None else round(first_ok - fault, 2),
        "last_failure_after_fault_s": None if last_failure is None
        else round(last_failure - fault, 2),
    }


def in_flight_at(requests: Sequence[Request], t: float) -> dict[str, int]:
    """Requests sent before ``t`` and not answered by then: their outcomes by code."""
    return dict(sorted(Counter(
        "CANCELLED_BY_CLIENT" if r.code is None else r.code for r in requests
        if r.sent is not None and r.sent < t and (r.ended is None or r.ended > t)).items()))


def client_report(requests: Sequence[Request], fault: float | None,
                  during_end: float | None) -> dict[str, Any]:
    report: dict[str, Any] = {"all": window_stats(requests)}
    if fault is not None and during_end is not None:
        for name, part in split_windows(requests, fault, during_end).items():
            report[name] = window_stats(part)
        report |= recovery(requests, fault)
    return report


def growth_pct(samples: Sequence[tuple[float, float]], last_s: float) -> float | None:
    """Growth of a series of (time, value) over its last ``last_s`` seconds, in % of the value
    at the start of that span (the sample closest to end - last_s); None with < 2 samples."""
    if len(samples) < 2:
        return None
    end_t, end_v = samples[-1]
    start_t, start_v = min(samples, key=lambda s: abs(s[0] - (end_t - last_s)))
    if start_t >= end_t or start_v <= 0:
        return None
    return round((end_v - start_v) / start_v * 100.0, 2)


def table_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The README's Reliability columns for one scenario (retry / no_retry side by side)."""
    if "skipped" in result or "error" in result:
        return {"scenario": name, "note": result.get("skipped") or result.get("error")}
    found = result.get("clients", {})
    pair = [found.get("retry", {}), found.get("no_retry", {})]

    def both(window: str, key: str) -> list[Any]:
        return [c.get(window, {}).get(key) for c in pair]

    recovery = {k: v for k, v in (result.get("recovery") or {}).items() if v is not None}
    windows = [w for w in ("before", "during", "after") if any(w in c for c in pair)]
    row = {
        "scenario": name, "requests": both("all", "sent"), "failed": both("all", "failed"),
        "p99_ms": {w: both(w, "p99_ms") for w in windows or ["all"]},
        "recovery_s": recovery, "acked_writes_lost": result.get("acked_writes_lost"),
    }
    growth = [v for k, v in (result.get("rss_growth_pct_last") or {}).items()
              if k != "span_s" and v is not None]
    if growth:
        row["rss_growth_pct_max"] = max(growth)
    return row


# --- processes of one service -----------------------------------------------------------------


def session_processes(sid: int) -> list[Any]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def role(proc: Any, driver_pid: int, app: str) -> str | None:
    """What a process of the service's session is (None: not one we report)."""
    import psutil

    try:
        if proc.pid == driver_pid:
            return "serve"
        text = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    marker = REPLICA_TITLE.format(app=app, deployment="")
    if marker in text:
        return text.split(marker, 1)[1].split()[0]
    for needle, name in (("ServeController", "serve_controller"), ("raylet", "raylet"),
                         ("gcs_server", "gcs"), ("dashboard.py", "dashboard")):
        if needle in text:
            return name
    return None


def rss_by_role(sid: int, driver_pid: int, app: str) -> dict[str, float]:
    """RSS in MB of every reported process; a second replica of a deployment is "Name#2"."""
    import psutil

    out: dict[str, float] = {}
    for proc in sorted(session_processes(sid), key=lambda p: p.pid):
        name = role(proc, driver_pid, app)
        if name is None:
            continue
        try:
            rss = proc.memory_info().rss / MB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = round(rss, 1)
    return out


def replica_pids(sid: int, app: str, deployment: str) -> list[int]:
    import psutil

    title = REPLICA_TITLE.format(app=app, deployment=deployment)
    pids = []
    for proc in session_processes(sid):
        try:
            if any(part == title or part.endswith(":" + title) or part == "ray::" + title
                   for part in proc.cmdline()):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(pids)


# --- one `papersearch serve` ------------------------------------------------------------------


@dataclass
class Service:
    """`papersearch serve` in its own session on free loopback ports, optionally as an
    unprivileged user (then its HOME, Ray temp dir and data dir belong to that user)."""

    data_dir: Path
    scratch: Path
    rerank: bool
    app: str
    num_cpus: int
    user: int | None = None
    ray_dir: Path | None = None  # short: Ray's socket paths are limited to 107 bytes
    python: str = sys.executable
    grpc_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    starts: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def env(self) -> dict[str, str]:
        ray_tmp = self.ray_dir or self.scratch / "ray"
        home = self.scratch / "home"
        for path in (ray_tmp, home):
            path.mkdir(parents=True, exist_ok=True)
            if self.user is not None:
                os.chown(path, self.user, self.user)
        env = os.environ | {
            "PAPERSEARCH_SERVE__GRPC_PORT": str(self.grpc_port),
            "PAPERSEARCH_SERVE__HTTP_PORT": str(free_port()),
            "PAPERSEARCH_SERVE__DASHBOARD_PORT": str(self.dashboard_port),
            "PAPERSEARCH_SERVE__METRICS_PORT": str(self.metrics_port),
            "PAPERSEARCH_SERVE__NUM_CPUS": str(self.num_cpus),
            "PAPERSEARCH_SERVE__APP_NAME": self.app,
            "PAPERSEARCH_INDEX__DATA_DIR": str(self.data_dir),
            "PAPERSEARCH_SEARCH__RERANK_ENABLED": "true" if self.rerank else "false",
            "RAY_TMPDIR": str(ray_tmp),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if self.user is not None:
            env |= {"HOME": str(home), "USER": "nobody", "LOGNAME": "nobody"}
        return env

    def start(self) -> None:
        self.starts += 1
        command = [self.python, "-m", "papersearch.cli", "serve"]
        if self.user is not None:
            command = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}",
                       "--clear-groups", "--", *command]
        logfile = (self.scratch / f"serve-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env(), stdout=logfile,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.time()
        log(f"serve started (pid {self.pid}, {self.target}, rerank={self.rerank}"
            + (f", uid {self.user}" if self.user is not None else "") + ")")

    def log_tail(self, lines: int = 15) -> str:
        path = self.scratch / f"serve-{self.starts}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def health(self, service: str = "", timeout_s: float = 2.0) -> str:
        """SERVING, NOT_SERVING, ... or the gRPC status name of the failed check."""
        import grpc

        from papersearch.client import SearchClient

        with SearchClient(self.target, timeout_s=timeout_s) as client:
            try:
                return client.health(service)
            except grpc.RpcError as error:
                return error.code().name

    def wait_serving(self, timeout_s: float = SERVING_TIMEOUT_S) -> float:
        """Seconds from start to health SERVING."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"serve exited ({self.process.returncode}) before SERVING:\n"
                                   f"{self.log_tail()}")
            if self.health() == "SERVING":
                return round(time.time() - self.started, 2)
            time.sleep(0.5)
        raise RuntimeError(f"serve not SERVING after {timeout_s:.0f} s:\n{self.log_tail()}")

    def rss(self) -> dict[str, float]:
        return rss_by_role(self.pid, self.pid, self.app)

    def replicas(self, deployment: str) -> list[int]:
        return replica_pids(self.pid, self.app, deployment)

    def running(self) -> dict[str, tuple[int, str]]:
        """Per deployment: (RUNNING replicas, status) from Serve's status API; {} if unread."""
        from papersearch.loadtest.monitor import SERVE_STATUS_PATH, deployment_states, fetch

        try:
            payload = json.loads(fetch(f"http://127.0.0.1:{self.dashboard_port}"
                                       f"{SERVE_STATUS_PATH}"))
            return {name: (state.running, state.status)
                    for name, state in deployment_states(payload, self.app).items()}
        except (OSError, ValueError, LookupError):
            return {}

    def wait_exit(self, timeout_s: float) -> float | None:
        """Seconds until the driver exited (None: still running after ``timeout_s``)."""
        assert self.process is not None
        began = time.time()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return round(time.time() - began, 2)

    def kill(self) -> None:
        """SIGKILL the whole session (driver, Ray and replicas), and wait until it is gone."""
        if self.process is None:
            return
        sid = self.pid
        for proc in session_processes(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        deadline = time.monotonic() + 15
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


# --- load generators: `papersearch loadtest`, recording every request -------------------------


def loadgen_child(records_path: Path, argv: list[str]) -> int:
    """Run `papersearch loadtest ARGV`, writing the run's clock origin (wall time) to
    RECORDS.start once it begins and every request record to RECORDS at the end."""
    from papersearch import cli
    from papersearch.loadtest import runner, stats

    original_run, original_summarize = runner.Runner.run, stats.summarize
    origin: dict[str, float] = {}

    async def run(self: Any, offsets: Sequence[float], until: float = 0.0) -> Any:
        origin["wall"] = time.time() - self.clock()
        records_path.with_suffix(".start").write_text(str(origin["wall"]))
        return await original_run(self, offsets, until)

    def summarize(records: Sequence[Any], duration_s: float) -> Any:
        rows = [[r.scheduled_s, str(r.outcome), r.started_s, r.ended_s, r.code, r.reranked]
                for r in records]
        records_path.write_text(json.dumps({"origin": origin.get("wall"), "records": rows}))
        return original_summarize(records, duration_s)

    runner.Runner.run = run  # type: ignore[method-assign]
    stats.summarize = summarize
    return cli.main(argv)


def retry_flags_available() -> bool:
    done = subprocess.run([*PAPERSEARCH, "loadtest", "--help"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    return "--no-retry" in done.stdout


@dataclass
class LoadGen:
    name: str  # "retry" or "no_retry"
    process: subprocess.Popen[bytes]
    records: Path

    def origin(self) -> float | None:
        try:
            return float(self.records.with_suffix(".start").read_text())
        except (OSError, ValueError):
            return None

    def requests(self) -> list[Request]:
        data = json.loads(self.records.read_text())
        origin = data["origin"]

        def wall(t: float | None) -> float | None:
            return None if t is None else origin + t

        return [Request(origin + scheduled, wall(started),
                        wall(ended) if code is not None else None, code, reranked)
                for scheduled, _, started, ended, code, reranked in data["records"]]


class Load:
    """Two load generators at once, with and without client retries."""

    def __init__(self, service: Service, scratch: Path, label: str, rate: float,
                 duration_s: float, rerank: bool, retry_flags: bool, deadline_s: float) -> None:
        self.gens: list[LoadGen] = []
        for name in ("retry", "no_retry"):
            out = scratch / f"{label}-{name}"
            out.mkdir(parents=True, exist_ok=True)
            argv = ["loadtest", "--target", service.target, "--rate", f"{rate:g}",
                    "--duration", f"{duration_s:g}", "--requests",
                    str(int(rate * duration_s) + 10),
                    "--rerank" if rerank else "--no-rerank", "--deadline-s", f"{deadline_s:g}",
                    "--seed", "1" if name == "retry" else "2", "--out", str(out),
                    "--status-url", f"http://127.0.0.1:{service.dashboard_port}",
                    "--metrics-url", f"http://127.0.0.1:{service.metrics_port}/metrics",
                    "--metrics-settle-s", "0", "--app", service.app]
            if retry_flags:
                # the retry client: the policy and waitForReady (reads wait for a restarting
                # gateway within their deadline); the other: a client that configured nothing
                argv += ["--retry", "--wait-for-ready"] if name == "retry" else ["--no-retry"]
            records = out / "records.json"
            logfile = (out / "loadgen.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "_loadgen", str(records), *argv],
                cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
            self.gens.append(LoadGen(name, process, records))

    def wait_started(self, timeout_s: float = 120.0) -> float:
        """Wall time by which both are sending (the later origin)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            origins = [g.origin() for g in self.gens]
            if all(o is not None for o in origins):
                return max(o for o in origins if o is not None)
            for g in self.gens:
                if g.process.poll() is not None:
                    raise RuntimeError(f"load generator {g.name} exited early:\n"
                                       f"{tail(g.records.parent / 'loadgen.log')}")
            time.sleep(0.1)
        raise RuntimeError("load generators did not start")

    def finish(self, timeout_s: float) -> dict[str, list[Request]]:
        out = {}
        for g in self.gens:
            try:
                g.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                g.process.kill()
                g.process.wait()
            if not g.records.exists():
                raise RuntimeError(f"load generator {g.name} wrote no records:\n"
                                   f"{tail(g.records.parent / 'loadgen.log')}")
            out[g.name] = g.requests()
        return out

    def stop(self) -> None:
        for g in self.gens:
            if g.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(g.process.pid, signal.SIGKILL)
                g.process.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- scenarios --------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    scratch: Path
    base_index: Path
    has_reranker: bool
    retry_flags: bool
    app: str = "papersearch"
    services: int = 0

    def data_copy(self, name: str, owner: int | None = None) -> Path:
        path = self.scratch / name / "index"
        shutil.copytree(self.base_index, path)
        if owner is not None:
            for root, dirs, files in os.walk(path.parent):
                os.chown(root, owner, owner)
                for entry in (*dirs, *files):
                    os.chown(os.path.join(root, entry), owner, owner)
        return path

    def service(self, name: str, rerank: bool = False, user: int | None = None) -> Service:
        data = self.data_copy(name, user)
        scratch = self.scratch / name
        if user is not None:
            os.chown(scratch, user, user)
        self.services += 1
        python = sys.executable if user is None else unprivileged_python(self.scratch)
        return Service(data, scratch, rerank and self.has_reranker, self.app,
                       self.args.num_cpus, user, self.scratch / f"r{self.services}", python)

    def load(self, service: Service, label: str, duration_s: float, rerank: bool = False,
             rate: float | None = None) -> Load:
        rate = rate if rate is not None else (self.args.rerank_rate if rerank else
                                              self.args.rate)
        return Load(service, service.scratch, label, rate, duration_s, rerank, self.retry_flags,
                    self.args.deadline_s)


def world_executable(path: Path) -> bool:
    """Every folder above ``path`` searchable and the file executable by others."""
    path = path.resolve()
    return path.exists() and bool(path.stat().st_mode & 0o001) and all(
        parent.stat().st_mode & 0o001 for parent in path.parents)


def unprivileged_python(scratch: Path) -> str:
    """An interpreter another user can run with this environment's packages: this one if
    others may execute it, else a venv in ``scratch`` over a system Python of the same
    version whose .pth adds this environment's site-packages (pyenv's lives under /root)."""
    import sysconfig

    if world_executable(Path(sys.executable)):
        return sys.executable
    shim = scratch / "venv"
    python = shim / "bin" / "python"
    if python.exists():
        return str(python)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = next((Path(p) for p in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}")
                 if world_executable(Path(p))), None)
    if base is None:
        raise RuntimeError(f"no Python {version} that an unprivileged user may run "
                           f"({sys.executable} is not)")
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(shim)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    packages = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "zz_papersearch.pth").write_text(
        f"import site; site.addsitedir({packages!r})\n")
    for root, dirs, files in os.walk(shim):
        for entry in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            if not os.path.islink(entry):
                os.chmod(entry, os.stat(entry).st_mode | 0o005)
    return str(python)


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        service.start()
        service.wait_serving()
        yield service
    finally:
        service.kill()


def clients(runs: dict[str, list[Request]], fault: float | None,
            during_end: float | None) -> dict[str, Any]:
    return {name: client_report(reqs, fault, during_end) for name, reqs in runs.items()}


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def scenario_kill(ctx: Context, deployment: str) -> dict[str, Any]:
    """SIGKILL one replica of ``deployment`` under load; recovery from Serve's status API."""
    a = ctx.args
    rerank = deployment == "Reranker"
    if rerank and not ctx.has_reranker:
        return {"skipped": "no reranker model in models.repository: `papersearch models export "
                           "--all` (or --reranker SOURCE) first"}
    service = ctx.service(f"kill-{deployment.lower()}", rerank=rerank)
    with running(service):
        rss_start = service.rss()
        before_running = service.running().get(deployment, (0, "?"))[0]
        duration = a.before_s + a.window_s + a.after_s
        load = ctx.load(service, "load", duration, rerank=rerank)
        try:
            start = load.wait_started()
            sleep_until(start + a.before_s)
            victims = service.replicas(deployment)
            if not victims:
                raise RuntimeError(f"no {deployment} replica process found")
            victim = victims[0]
            fault = time.time()
            os.kill(victim, signal.SIGKILL)
            log(f"SIGKILL {deployment} replica pid {victim}")
            replaced = back = None
            while time.time() - fault < a.before_s + a.window_s + a.after_s:
                now = time.time()
                pids = service.replicas(deployment)
                if replaced is None and any(p != victim for p in pids if p not in victims):
                    replaced = now - fault
                count, status = service.running().get(deployment, (0, "?"))
                if back is None and replaced is not None and count >= max(1, before_running) \
                        and status == "HEALTHY":
                    back = now - fault
                    break
                time.sleep(0.25)
            during_end = fault + max(a.window_s, back or 0.0)
            runs = load.finish(duration + a.deadline_s + 60)
        finally:
            load.stop()
        return {
            "deployment": deployment, "killed_pid": victim, "rerank_load": rerank,
            "replicas_running_before": before_running,
            "recovery": {"new_replica_process_s": round(replaced, 2) if replaced else None,
                         "serve_running_again_s": round(back, 2) if back else None},
            "clients": clients(runs, fault, during_end),
            "rss_mb": {"start": rss_start, "end": service.rss()},
            "acked_writes_lost": 0,
        }


def first_ok_search(service: Service, timeout_s: float) -> float | None:
    """Seconds from the service's start to the first OK search (polled every 0.25 s)."""
    import grpc

    from papersearch.client import SearchClient
    from papersearch.pipeline.query import SearchQuery

    deadline = time.monotonic() + timeout_s
    with SearchClient(service.target, timeout_s=5) as client:
        while time.monotonic() < deadline:
            try:
                client.search(SearchQuery("graph neural networks", rerank=False))
                return round(time.time() - service.started, 2)
            except grpc.RpcError:
                time.sleep(0.25)
    return None


def scenario_drain_restart(ctx: Context) -> dict[str, Any]:
    """SIGTERM `papersearch serve` under load (plus slow rerank requests when a reranker is
    there, so some are in flight), then start it again on the same data."""
    a = ctx.args
    service = ctx.service("drain-restart", rerank=True)
    slow = None
    try:
        service.start()
        service.wait_serving()
        rss_start = service.rss()
        duration = a.before_s + a.window_s
        load = ctx.load(service, "before", duration)
        if service.rerank:
            slow = ctx.load(service, "slow", duration, rerank=True,
                            rate=max(a.rerank_rate, 1.0))
        try:
            start = max(load.wait_started(), slow.wait_started() if slow else 0.0)
            sleep_until(start + a.before_s)
            rss_before_term = service.rss()
            fault = time.time()
            os.kill(service.pid, signal.SIGTERM)
            log(f"SIGTERM serve pid {service.pid}")
            exited = service.wait_exit(STOP_TIMEOUT_S)
            deadline = time.monotonic() + 10  # processes exiting as we look are not left
            while (left := session_processes(service.pid)) and time.monotonic() < deadline:
                time.sleep(0.2)
            service.kill()  # whatever the drain left behind: the shard must be free
            runs = load.finish(duration + a.deadline_s + 60)
            slow_runs = slow.finish(duration + a.deadline_s + 60) if slow else {}
        finally:
            load.stop()
            if slow:
                slow.stop()
        restart_began = time.time()
        service.start()
        serving = service.wait_serving()
        first_ok = first_ok_search(service, 60)
        after = ctx.load(service, "after", a.after_s)
        try:
            after.wait_started()
            after_runs = after.finish(a.after_s + a.deadline_s + 60)
        finally:
            after.stop()
        in_flight = {name: in_flight_at(reqs, fault)
                     for name, reqs in {**runs, **{f"rerank_{k}": v
                                                   for k, v in slow_runs.items()}}.items()}
        failed_in_flight = sum(n for codes in in_flight.values()
                               for code, n in codes.items() if code != "OK")
        # before: up to SIGTERM; during: until the new service's first OK; after: the load
        # started once it answered
        up_again = service.started + (first_ok or serving)
        report_clients = clients({name: reqs + after_runs.get(name, [])
                                  for name, reqs in runs.items()}, fault, up_again)
        for name, reqs in slow_runs.items():
            report_clients[f"rerank_{name}"] = client_report(reqs, fault, fault + a.window_s)
        return {
            "sigterm_to_exit_s": exited, "processes_left_after_exit": len(left),
            "in_flight_at_sigterm": in_flight, "in_flight_failed": failed_in_flight,
            "recovery": {"restart_to_serving_s": serving, "restart_to_first_ok_s": first_ok,
                         "sigterm_to_first_ok_s":
                             round(service.started + first_ok - fault, 2) if first_ok else None,
                         "down_before_restart_s": round(restart_began - fault, 2)},
            "clients": report_clients,
            "rss_mb": {"start": rss_start, "before_sigterm": rss_before_term,
                       "restarted_end": service.rss()},
            "acked_writes_lost": 0,
        }
    finally:
        service.kill()


def poll_health(service: Service, stop: threading.Event, timeline: list[tuple[float, str, str]],
                ) -> None:
    """(time, readiness, liveness) on each change, every 0.25 s, until ``stop``."""
    last: tuple[str, str] | None = None
    while not stop.is_set():
        now = (service.health("", 1.0), service.health("liveness", 1.0))
        if now != last:
            timeline.append((time.time(), *now))
            last = now
        stop.wait(0.25)


def scenario_index_outage_embedded(ctx: Context) -> dict[str, Any]:
    """The data directory unreadable for --outage-s, then readable; serve runs as nobody."""
    a = ctx.args
    service = ctx.service("outage", user=UNPRIVILEGED)
    try:
        with running(service):
            rss_start = service.rss()
            pids_before = {d: service.replicas(d) for d in ("Gateway",)}
            duration = a.before_s + a.outage_s + a.after_s
            load = ctx.load(service, "load", duration)
            stop, timeline = threading.Event(), list[tuple[float, str, str]]()
            watcher = threading.Thread(target=poll_health, args=(service, stop, timeline),
                                       daemon=True)
            mode = service.data_dir.stat().st_mode & 0o7777
            try:
                start = load.wait_started()
                watcher.start()
                sleep_until(start + a.before_s)
                fault = time.time()
                service.data_dir.chmod(0)
                log(f"chmod 000 {service.data_dir}")
                sleep_until(fault + a.outage_s)
                service.data_dir.chmod(mode)
                returned = time.time()
                log(f"chmod {mode:o} {service.data_dir}")
                runs = load.finish(duration + a.deadline_s + 60)
            finally:
                service.data_dir.chmod(mode)
                stop.set()
                load.stop()
            pids_after = {d: service.replicas(d) for d in ("Gateway",)}
            not_serving = next((t for t, ready, _ in timeline
                                if t >= fault and ready != "SERVING"), None)
            serving_again = next((t for t, ready, _ in timeline
                                  if t >= returned and ready == "SERVING"), None)
            return {
                "user": UNPRIVILEGED, "outage_s": a.outage_s,
                "health_timeline": [[round(t - fault, 2), ready, live]
                                    for t, ready, live in timeline],
                "recovery": {
                    "not_serving_after_outage_s":
                        round(not_serving - fault, 2) if not_serving else None,
                    "serving_after_return_s":
                        round(serving_again - returned, 2) if serving_again else None},
                "restarted": {d: pids_before[d] != pids_after[d] for d in pids_before},
                "clients": clients(runs, fault, returned),
                "rss_mb": {"start": rss_start, "end": service.rss()},
                "acked_writes_lost": 0,
            }
    finally:
        with contextlib.suppress(OSError):
            service.data_dir.chmod(0o755)


def scenario_index_outage_server(ctx: Context) -> dict[str, Any]:
    if shutil.which("qdrant") is None:
        return {"skipped": "no Qdrant server binary (`qdrant`) on this machine: the server "
                           "backend's outage (an address that stops answering, then answers) "
                           "cannot run here"}
    return {"skipped": "a qdrant binary is on PATH, but this scenario is not implemented yet"}


def upsert_papers(ctx: Context, token: str) -> tuple[list[Any], list[Any]]:
    """Two sets of corpus papers under fresh ids (not in the index): A, B."""
    from papersearch.corpus.readers import read_corpus
    from papersearch.settings import Settings

    papers = list(read_corpus(Settings().corpus_dir))
    size_a, size_b = ctx.args.upsert_a, ctx.args.upsert_b
    chosen = [papers[i % len(papers)] for i in range(size_a + size_b)]
    renamed = [dataclasses.replace(p, id=f"faults-{token}-{i}") for i, p in enumerate(chosen)]
    return renamed[:size_a], renamed[size_a:]


def shard_check(data_dir: Path, ids: Sequence[str]) -> tuple[int, set[str]]:
    """The shard's point count and which of ``ids`` it holds (opened here, serve stopped)."""
    from papersearch.corpus.paper import point_id
    from papersearch.encoder.runtime import Encoder
    from papersearch.pipeline.factory import open_index
    from papersearch.settings import Settings

    settings = Settings(index={"data_dir": data_dir})
    with open_index(settings, Encoder.from_settings(settings.models)) as store:
        points = {point_id(i): i for i in ids}
        return store.count(), {points[p] for p in store.existing_ids(points)}


def stream(papers: Sequence[Any], sent: list[int], half: threading.Event | None,
           pause_s: float) -> Iterator[Any]:
    for i, paper in enumerate(papers):
        if half is not None and i == len(papers) // 2:
            half.set()
        sent[0] = i + 1
        yield paper
        if pause_s:
            time.sleep(pause_s)


def send_stream(client: Any, papers: Sequence[Any], sent: list[int],
                half: threading.Event | None, pause_s: float) -> dict[str, Any]:
    """One UpsertPapers stream: its summary, or the error's code, details, trailing metadata."""
    import grpc

    try:
        s = client.upsert(stream(papers, sent, half, pause_s))
        return {"summary": {"received": s.received, "upserted": s.upserted}}
    except grpc.RpcError as error:
        trailing = error.trailing_metadata() or ()
        return {"code": error.code().name, "details": error.details(),
                "trailing_metadata": {k: v if isinstance(v, str) else v.hex()
                                      for k, v in trailing}}


def committed_messages(outcome: dict[str, Any]) -> int | None:
    """The N of a failed stream's ``papersearch-committed-messages`` trailer: its first N
    messages are done (README, "A failed UpsertPapers says what it committed")."""
    value = (outcome.get("trailing_metadata") or {}).get("papersearch-committed-messages")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def missing(client: Any, papers: Sequence[Any]) -> list[str]:
    """Ids GetPaper does not find."""
    import grpc

    gone = []
    for paper in papers:
        try:
            client.get(paper.id)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            gone.append(paper.id)
    return gone


def send_into(outcome: dict[str, Any], *args: Any) -> None:
    outcome.update(send_stream(*args))


def wait_get_ok(client: Any, paper_id: str, since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` until GetPaper(paper_id) answers OK (None: not in time)."""
    import grpc

    while time.time() - since < timeout_s:
        try:
            client.get(paper_id)
            return round(time.time() - since, 2)
        except grpc.RpcError:
            time.sleep(0.25)
    return None


def scenario_upsert_kill(ctx: Context) -> dict[str, Any]:
    """Acked stream A; stream B cut by SIGKILL of the Gateway replica (the stream's server and
    the index owner); B resent after recovery under load,
    then again (idempotent) and the whole service SIGKILLed right after that acknowledgement;
    count and ids are then read from the shard itself."""
    from papersearch.client import SearchClient

    a = ctx.args
    batch_a, batch_b = upsert_papers(ctx, f"{int(time.time())}")
    service = ctx.service("upsert-kill")
    count_before, _ = shard_check(service.data_dir, [])
    result: dict[str, Any] = {"count_before": count_before, "stream_a": len(batch_a),
                              "stream_b": len(batch_b)}
    acked: set[str] = set()
    try:
        service.start()
        service.wait_serving()
        rss_start = service.rss()
        # the kill with its recovery, then the resend and "after"
        duration = a.before_s + a.window_s + UPSERT_RECOVERY_ALLOWANCE_S + a.after_s
        load = ctx.load(service, "load", duration)
        client = SearchClient(service.target, timeout_s=300)
        try:
            start = load.wait_started()
            result["stream_a_result"] = send_stream(client, batch_a, [0], None, 0.0)
            if "summary" in result["stream_a_result"]:
                acked |= {p.id for p in batch_a}
            sleep_until(start + a.before_s)
            cuts, fault, recovered = [], None, 0.0
            for deployment in ("Gateway",):
                victim = service.replicas(deployment)[0]
                sent, half, outcome = [0], threading.Event(), dict[str, Any]()
                sender = threading.Thread(target=send_into, args=(
                    outcome, client, batch_b, sent, half, a.upsert_pause_s))
                sender.start()
                half.wait(120)
                killed = time.time()
                fault = fault or killed
                os.kill(victim, signal.SIGKILL)
                at_kill = sent[0]
                log(f"SIGKILL {deployment} pid {victim}: {at_kill}/{len(batch_b)} papers sent")
                sender.join(300)
                if "summary" in outcome:  # the stream survived the kill: acknowledged
                    acked |= {p.id for p in batch_b}
                back = wait_get_ok(client, batch_a[0].id, killed, 180)
                recovered = time.time() - fault
                cut = {"killed": deployment, "pid": victim, "papers_sent_at_kill": at_kill,
                       **outcome, "get_paper_ok_after_kill_s": back}
                done = committed_messages(outcome)
                if done is not None:  # the stream's first N papers are acknowledged writes
                    cut["committed_missing_before_resend"] = len(missing(client,
                                                                         batch_b[:done]))
                    acked |= {p.id for p in batch_b[:done]}
                cuts.append(cut)
            result["stream_b_cut"] = cuts
            result["recovery"] = {f"{c['killed'].lower()}_get_paper_ok_s":
                                  c["get_paper_ok_after_kill_s"] for c in cuts}
            resends = [send_stream(client, batch_b, [0], None, 0.0)]
            runs = load.finish(duration + a.deadline_s + 60)
            rss_end = service.rss()
            resends.append(send_stream(client, batch_b, [0], None, 0.0))
            last_ack = time.time()
            if all("summary" in r for r in resends):
                acked |= {p.id for p in batch_b}
            service_kill = time.time()
            service.kill()  # right after the last acknowledgement
            log("SIGKILL of the whole service right after the last acknowledgement")
        finally:
            client.close()
            load.stop()
        result["resend_b"] = resends
        count_after, present = shard_check(service.data_dir, [p.id for p in batch_a + batch_b])
        lost = sorted(acked - present)
        assert fault is not None
        result |= {
            "count_after": count_after,
            "count_expected": count_before + len(batch_a) + len(batch_b),
            "acked_ids": len(acked), "acked_ids_present": len(acked & present),
            "acked_writes_lost": len(lost), "lost_ids_sample": lost[:10],
            "service_killed_after_last_ack_ms": round((service_kill - last_ack) * 1000, 1),
            "clients": clients(runs, fault, fault + max(a.window_s, recovered)),
            "rss_mb": {"start": rss_start, "end": rss_end},
        }
        return result
    finally:
        service.kill()


def scenario_soak(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    service = ctx.service("soak")
    with running(service):
        series: dict[str, list[tuple[float, float]]] = {}
        rss_start = service.rss()
        load = ctx.load(service, "load", a.soak_s, rate=a.soak_rate)
        try:
            start = load.wait_started()
            while any(g.process.poll() is None for g in load.gens):
                now = time.time()
                for name, mb in service.rss().items():
                    series.setdefault(name, []).append((now - start, mb))
                while time.time() < now + RSS_SAMPLE_S and any(
                        g.process.poll() is None for g in load.gens):
                    time.sleep(0.5)
            runs = load.finish(a.deadline_s + 60)
        finally:
            load.stop()
        last_s = min(300.0, a.soak_s / 2)
        report = clients(runs, None, None)
        for name, reqs in runs.items():
            report[name]["p99_ms_by_minute"] = [
                window_stats([r for r in reqs if r.sent is not None
                              and start + 60 * m <= r.sent < start + 60 * (m + 1)])["p99_ms"]
                for m in range(int(-(-a.soak_s // 60)))]
        return {
            "soak_s": a.soak_s, "rate_per_client": a.soak_rate, "clients": report,
            "rss_mb": {"start": rss_start, "end": service.rss()},
            "rss_growth_pct_last": {"span_s": last_s, **{
                name: growth_pct(points, last_s) for name, points in sorted(series.items())}},
            "acked_writes_lost": 0,
        }


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "kill_encoder": lambda ctx: scenario_kill(ctx, "QueryEncoder"),
    "kill_reranker": lambda ctx: scenario_kill(ctx, "Reranker"),
    "kill_index_owner": lambda ctx: scenario_kill(ctx, "Gateway"),
    "drain_restart": scenario_drain_restart,
    "index_outage_embedded": scenario_index_outage_embedded,
    "index_outage_server": scenario_index_outage_server,
    "upsert_kill": scenario_upsert_kill,
    "soak": scenario_soak,
}


# --- setup and main ---------------------------------------------------------------------------


def build_index(scratch: Path, limit: int | None) -> tuple[Path, int]:
    """Ingest corpus_dir (its first ``limit`` papers) into a scratch index with `papersearch
    ingest`; returns the data dir and the papers written."""
    from papersearch.corpus.readers import read_corpus
    from papersearch.settings import Settings

    settings = Settings()
    paths = [settings.corpus_dir]
    if limit is not None:
        subset = scratch / "corpus.jsonl"
        with subset.open("w") as out:
            for i, paper in enumerate(read_corpus(settings.corpus_dir)):
                if i >= limit:
                    break
                out.write(json.dumps({
                    "id": paper.id, "title": paper.title, "abstract": paper.abstract,
                    "authors": list(paper.authors), "categories": list(paper.categories),
                    "published": paper.published.isoformat() if paper.published else None,
                }) + "\n")
        paths = [subset]
    data = scratch / "base-index"
    env = os.environ | {"PAPERSEARCH_INDEX__DATA_DIR": str(data)}
    done = subprocess.run([*PAPERSEARCH, "ingest", "--quiet", *map(str, paths)], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"papersearch ingest failed:\n{done.stderr[-2000:]}")
    return data, int(json.loads(done.stdout)["collection_size"])


def prerequisites() -> tuple[bool, str]:
    """(a reranker model is there, the model repository); the embedder must be."""
    from papersearch.models.manifest import model_dir
    from papersearch.settings import Settings

    models = Settings().models
    try:
        model_dir(models.repository, models.embedder_name)
    except Exception as error:  # noqa: BLE001
        raise SystemExit(f"faults: {error}: run `papersearch models export` first") from None
    try:
        model_dir(models.repository, models.reranker_name)
        return True, str(models.repository)
    except Exception:  # noqa: BLE001
        return False, str(models.repository)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="repeatable; default: all (--quick: " + ", ".join(QUICK) + ")")
    parser.add_argument("--quick", action="store_true", help="the quick scenarios only")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="searches/s of each of the two clients (default %(default)s)")
    parser.add_argument("--rerank-rate", type=float, default=0.5,
                        help="searches/s of each client under rerank load (default %(default)s)")
    parser.add_argument("--before-s", type=float, default=20.0, help="load before the fault")
    parser.add_argument("--window-s", type=float, default=15.0,
                        help="'during' lasts this long after the fault, or until recovery")
    parser.add_argument("--after-s", type=float, default=25.0, help="load after 'during'")
    parser.add_argument("--outage-s", type=float, default=15.0, help="index outage length")
    parser.add_argument("--deadline-s", type=float, default=10.0, help="per-request deadline")
    parser.add_argument("--soak-s", type=float, default=600.0, help="soak length")
    parser.add_argument("--soak-rate", type=float, default=5.0,
                        help="searches/s of each client in the soak (default %(default)s)")
    parser.add_argument("--upsert-a", type=int, default=64, help="papers acked before the kill")
    parser.add_argument("--upsert-b", type=int, default=256, help="papers of the cut stream")
    parser.add_argument("--upsert-pause-s", type=float, default=0.01,
                        help="between papers of the cut stream (it must outlast the kill)")
    parser.add_argument("--corpus-limit", type=int, help="ingest only the first N papers")
    parser.add_argument("--num-cpus", type=int, default=3,
                        help="logical CPUs of each service's Ray (default %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.scenario or (list(QUICK) if args.quick else list(SCENARIOS))
    has_reranker, repository = prerequisites()
    scratch = Path(tempfile.mkdtemp(prefix="psf-"))  # short: Ray socket paths are limited
    os.chmod(scratch, 0o755)  # the unprivileged service must reach its own folders
    began = time.time()
    report: dict[str, Any] = {"scenarios": {}}
    try:
        retry_flags = retry_flags_available()
        log(f"scratch {scratch}; retry flags in `papersearch loadtest`: {retry_flags}")
        base_index, papers = build_index(scratch, args.corpus_limit)
        log(f"ingested {papers} papers into {base_index}")
        report["setup"] = {
            "rate_per_client": args.rate, "rerank_rate_per_client": args.rerank_rate,
            "before_s": args.before_s, "window_s": args.window_s, "after_s": args.after_s,
            "deadline_s": args.deadline_s, "papers_indexed": papers,
            "model_repository": repository, "reranker_model": has_reranker,
            "loadtest_retry_flags": retry_flags,
            "clients": "retry: `papersearch loadtest --retry --wait-for-ready`; no_retry: "
                       "`--no-retry`" if
            retry_flags else "the loadtest has no --retry/--no-retry yet: both clients alike",
            "num_cpus": args.num_cpus,
        }
        ctx = Context(args, scratch, base_index, has_reranker, retry_flags)
        for name in names:
            log(f"scenario {name}")
            started = time.time()
            try:
                result = RUNNERS[name](ctx)
            except Exception as error:  # noqa: BLE001 - one scenario's failure is reported
                result = {"error": f"{type(error).__name__}: {error}"}
            result["seconds"] = round(time.time() - started, 1)
            report["scenarios"][name] = result
            log(f"scenario {name} done in {result['seconds']} s")
    finally:
        report["table"] = [table_row(n, r) for n, r in report["scenarios"].items()]
        report["seconds"] = round(time.time() - began, 1)
        if args.keep:
            report["scratch"] = str(scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_loadgen":
        raise SystemExit(loadgen_child(Path(sys.argv[2]), sys.argv[3:]))
    raise SystemExit(main())

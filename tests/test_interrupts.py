"""Ctrl-C on every long command, for real (the slow tests): each runs as a subprocess in its own
process group (as a terminal runs it), gets SIGINT on the whole group mid-run, and must exit 130
with one line on stderr and no traceback, keeping what it committed; a rerun finishes the work.

SIGINT reaches the commands with SIGINT ignored, as a background job of a non-interactive shell
inherits it: the case where Ctrl-C used to do nothing. No test asserts speed: the generous
timeout only catches a hang. Each test prints its SIGINT-to-exit time (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from papersearch import interrupts
from papersearch.index.schema import EmbedderIdentity
from papersearch.modelbuild.export import EXPORT_LOCK
from papersearch.models.manifest import read_manifest
from papersearch.settings import Settings, TrainingSettings
from tests.conftest import ROOT, SAMPLE_CORPUS
from tests.ports import free_port
from tests.test_ingest import (
    assert_stored_exactly,
    cli_env,
    command,
    make_records,
    opened,
    run_cli,
    write_jsonl,
)

READY_TIMEOUT_S = 600  # for the command to reach the point where it is interrupted
EXIT_TIMEOUT_S = 60  # from SIGINT to exit: a hang guard, not a speed requirement
MESSAGE = re.compile(r"^papersearch: interrupted(?: \((.+)\))?$")
TRAINING = {  # even tinier than conftest's: a few dozen short steps (one thread: two oversubscribe
    # a 2-core machine that runs anything else, 10x slower)
    "corpora": [str(SAMPLE_CORPUS)], "max_pairs": 8, "negatives_per_query": 1, "batch_size": 4,
    "max_length": 64, "epochs": 3, "torch_threads": 1,
}


@dataclass(frozen=True, slots=True)
class Stopped:
    returncode: int
    stderr: str
    seconds: float  # SIGINT to exit

    @property
    def last_line(self) -> str:
        lines = [line for line in re.split(r"[\r\n]", self.stderr) if line.strip()]
        return lines[-1] if lines else ""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], list[str]]:
    """The command in a process group (and session) of its own, SIGINT ignored as it starts;
    its stderr collected as it comes."""
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_ignore_sigint)
    chunks: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        while data := proc.stderr.read1(65536):
            chunks.append(data.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    return proc, chunks


def wait_until(proc: subprocess.Popen[bytes], chunks: list[str],
               ready: Callable[[str], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready("".join(chunks)):
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{''.join(chunks)[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"not {what} within {READY_TIMEOUT_S} s:\n{''.join(chunks)[-3000:]}")
        time.sleep(0.05)


def interrupt(proc: subprocess.Popen[bytes], chunks: list[str], name: str,
              signum: int = signal.SIGINT) -> Stopped:
    """SIGINT to the command's whole process group, as Ctrl-C in a terminal sends it (or
    ``signum``: SIGTERM, as ``timeout`` or ``docker stop`` send it)."""
    started = time.monotonic()
    os.killpg(proc.pid, signum)
    try:
        proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{name} still running {EXIT_TIMEOUT_S} s after SIGINT:\n"
                    f"{''.join(chunks)[-3000:]}")
    seconds = time.monotonic() - started
    time.sleep(0.2)  # the pump's last read
    print(f"\n{name}: SIGINT -> exit {seconds:.2f} s")
    return Stopped(proc.returncode, "".join(chunks), seconds)


def run_and_interrupt(name: str, args: list[str], env: dict[str, str],
                      ready: Callable[[str], bool], what: str, delay_s: float = 0.0,
                      signum: int = signal.SIGINT) -> Stopped:
    """Start the command, SIGINT (``signum``) its group once ``ready(stderr so far)`` (and
    ``delay_s``)."""
    proc, chunks = start(args, env)
    try:
        wait_until(proc, chunks, ready, what)
        time.sleep(delay_s)
        return interrupt(proc, chunks, name, signum)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_interrupted(stopped: Stopped, detail: str | None = None) -> re.Match[str]:
    """Exit status 130, no traceback, one line saying so, last on stderr."""
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.count("papersearch: interrupted") == 1, stopped.stderr[-3000:]
    match = MESSAGE.match(stopped.last_line)
    assert match, stopped.stderr[-3000:]
    if detail is not None:
        found = re.fullmatch(detail, match.group(1) or "")
        assert found, f"{stopped.last_line!r} does not match {detail!r}"
        return found
    return match


def upserted(text: str) -> bool:
    return bool(re.search(r"papersearch\.index\.store: upserted\b", text))


@pytest.fixture(scope="module")
def identity(embedder_dir: Path) -> EmbedderIdentity:
    manifest = read_manifest(embedder_dir)
    assert manifest.dim
    return EmbedderIdentity(manifest.sha256, manifest.dim)


# -- fast: the message, the estimate, the checkpoint key -------------------------------------


def test_the_message_says_what_was_kept() -> None:
    from papersearch.interrupts import Interrupted, message

    assert message(KeyboardInterrupt()) == "papersearch: interrupted"
    assert message(Interrupted("ingest: 320 papers written by this run; run again to resume")) \
        == "papersearch: interrupted (ingest: 320 papers written by this run; run again to resume)"
    # a second Ctrl-C while the first's cleanup ran: the line kept what the first one said
    try:
        try:
            raise Interrupted("ingest: 96 papers written by this run; run again to resume")
        finally:
            raise KeyboardInterrupt  # noqa: B012 (as a signal lands in a finally block)
    except KeyboardInterrupt as second:
        assert message(second) == ("papersearch: interrupted (ingest: 96 papers written by "
                                   "this run; run again to resume)")


def test_sigterm_is_held_as_ctrl_c_is() -> None:
    """A SIGTERM inside held() waits for the block, then stops the command as Ctrl-C does."""
    from papersearch.interrupts import catch_sigint, held

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        catch_sigint()
        done = False
        with pytest.raises(KeyboardInterrupt):
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done = True
        assert done
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_once_the_command_is_over_ctrl_c_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second, impatient Ctrl-C after the command's cleanup cut its one line, or the
    interpreter's exit, short with a traceback (threading's shutdown, logging's handlers
    closing): run from the console entry point, a command that returned or raised leaves
    SIGINT and SIGTERM ignored before its last line; called as a library, nothing changes."""
    import papersearch.cli as cli
    from papersearch.interrupts import SIGNALS

    def interrupted(settings: Any, args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_models_info", interrupted)
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    try:
        assert cli.main(["models", "info"]) == 130
        assert not any(signal.getsignal(s) is signal.SIG_IGN for s in SIGNALS)
        assert cli.main(["models", "info"], own_process=True) == 130
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in SIGNALS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_the_training_estimate_line() -> None:
    from papersearch.modelbuild.training import _estimate

    assert _estimate(0, 1036, 12.6) == (
        "train-reranker: 1,036 steps, ~12.6 s/step here, about 3 h 38 min "
        "(resumes from checkpoints; Ctrl-C is safe)")
    assert _estimate(120, 1036, 1.5) == (
        "train-reranker: resuming at step 120: 916 of 1,036 steps left, ~1.5 s/step here, "
        "about 23 min (resumes from checkpoints; Ctrl-C is safe)")
    assert "about 40 s" in _estimate(0, 8, 5.0)
    assert _estimate(0, 140, 12.6, 250) == (
        "train-reranker: 140 steps (of 250: what fits training.time_budget_s), ~12.6 s/step "
        "here, about 29 min (resumes from checkpoints; Ctrl-C is safe)")
    assert _estimate(0, 250, 1.5, 250).startswith("train-reranker: 250 steps, ~1.5 s/step")


def test_a_time_budget_fits_the_steps_and_keeps_the_export_aside() -> None:
    from papersearch.modelbuild.training import EXPORT_RESERVE_S, export_reserve, fit_steps

    # issue 17's 30 minutes on a slow CPU (12.6 s/step), after 400 s of mining: its export
    # takes longer too (16.8 s here at 1.48 s/step, so ~140 s there), and is kept aside so
    assert export_reserve(12.6) == pytest.approx(15 * 12.6)
    assert export_reserve(12.6) > 140.0
    assert fit_steps(250, 12.6, 1800 - 400) == int((1400 - 15 * 12.6) // 12.6) == 96
    assert export_reserve(1.5) == EXPORT_RESERVE_S  # at least that on a fast CPU
    assert fit_steps(250, 1.5, 1800 - 400) == 250  # which trains them all
    assert fit_steps(250, 5.0, EXPORT_RESERVE_S + 5.0) == 1
    for left in (EXPORT_RESERVE_S + 4.9, 10.0, -30.0):  # mining spent it (train refuses)
        assert fit_steps(250, 5.0, left) == 0


def test_the_learning_rate_plan_warms_up_then_decays_also_when_a_refit_cut_it() -> None:
    from papersearch.modelbuild.training import _Plan

    plan = _Plan(100)
    assert plan.warmup == 10
    assert [plan.factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert plan.factor(50) == pytest.approx(50 / 91) and plan.factor(100) == 0.0
    assert _Plan.of({"steps": 100}) == plan  # a checkpoint from before budgets
    plan.steps = 8  # refit after 6 steps, below its warm-up of 10: still warming, no error
    assert [plan.factor(s) for s in (6, 7)] == [0.7, 0.8]


def test_checkpoint_settings_do_not_change_the_checkpoint_key(tmp_path: Path) -> None:
    """How often a run checkpoints has no effect on its weights, so it keeps the key: a run
    resumes under another interval."""
    from papersearch.modelbuild.mining import TrainingExample
    from papersearch.modelbuild.training import checkpoint_key

    (tmp_path / "config.json").write_text("{}")
    examples = [TrainingExample("q", "positive", ("negative",))]
    often, rarely = TrainingSettings(checkpoint_every_s=0), TrainingSettings(checkpoint_every_s=1e6)
    assert checkpoint_key(tmp_path, examples, often) == checkpoint_key(tmp_path, examples, rarely)
    assert checkpoint_key(tmp_path, examples, often) != checkpoint_key(
        tmp_path, examples, TrainingSettings(checkpoint_every_s=0, epochs=2))
    # the thread count changes the weights (the order of float sums): a resume with another
    # one did not end on the uninterrupted run's weights, and a finished run served both
    assert checkpoint_key(tmp_path, examples, TrainingSettings(torch_threads=1)) != \
        checkpoint_key(tmp_path, examples, TrainingSettings(torch_threads=2))
    # a time budget changes the weights (fewer steps)
    budgets = {checkpoint_key(tmp_path, examples, TrainingSettings(time_budget_s=s))
               for s in (None, 1800, 3600)}
    assert len(budgets) == 3


# -- a time budget, for real: trains the model (slow) ---------------------------------------------


@pytest.mark.slow
def test_a_time_budget_trains_what_fits_for_real(model_settings: Settings, embedder_dir: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline three probed steps away (the probe's seconds set, so that the count does not
    depend on this machine) trains three steps of the real model and says so; one that
    the probe says ten steps fit is fitted again on the pace of the first real steps (well
    under 30 s each on any CPU): all of them fit."""
    from papersearch.modelbuild import training
    from papersearch.modelbuild.mining import TrainingExample
    from papersearch.modelbuild.sources import resolve_source

    examples = [TrainingExample(f"query {n}", f"passage about topic {n}", (f"other {n}",))
                for n in range(24)]
    cfg = TrainingSettings.model_validate({**TRAINING, "time_budget_s": 1.0})
    monkeypatch.setattr(training, "_probe", lambda *args: 100.0)
    base = Path(resolve_source(model_settings.models.embedder_source,
                               model_settings.models.cache_dir).location)
    threads = torch.get_num_threads()
    try:
        trained = training.train(base, examples, cfg, tmp_path, probe=False,
                                 deadline=time.monotonic() + training.export_reserve(100.0)
                                 + 350.0)
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((trained / training.DONE_MARKER).read_text())
    assert summary["steps"] == 3  # 350 s left, 100 s per step
    assert summary["steps_without_budget"] == 3 * 12  # 3 epochs of 24 examples, 2 per step
    assert summary["time_budget_s"] == 1.0
    try:
        trained = training.train(base, examples, cfg.model_copy(update={"seed": 15}), tmp_path,
                                 probe=False,
                                 deadline=time.monotonic() + training.export_reserve(100.0)
                                 + 1000.0)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((trained / training.DONE_MARKER).read_text())["steps"] == 3 * 12
    with pytest.raises(ValueError, match=r"not enough for one training step .* raise it"):
        training.train(base, examples, cfg.model_copy(update={"seed": 14}), tmp_path,
                       deadline=time.monotonic() + 60.0)


@pytest.mark.slow
def test_a_budgeted_run_stopped_early_ends_on_the_uninterrupted_runs_weights(
        model_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint saved before a budgeted run refitted its step count held the probe's count:
    the resumed run trained 8 steps where the uninterrupted one trained 12, to other weights."""
    from papersearch.interrupts import Interrupted
    from papersearch.modelbuild import training
    from papersearch.modelbuild.mining import TrainingExample
    from papersearch.modelbuild.sources import resolve_source

    examples = [TrainingExample(f"query about topic {n}", f"a passage about topic {n}",
                                (f"unrelated text {n}",)) for n in range(12)]
    cfg = TrainingSettings.model_validate({**TRAINING, "max_length": 32, "epochs": 2,
                                           "time_budget_s": 1.0, "checkpoint_every_s": 0})
    base = Path(resolve_source(model_settings.models.embedder_source,
                               model_settings.models.cache_dir).location)
    monkeypatch.setattr(training, "_probe", lambda *args: 10.0)  # 8 steps by the probe
    real_step, steps = training._step, 0

    def step(*args: Any) -> Any:
        nonlocal steps
        steps += 1
        if steps == 3:
            raise KeyboardInterrupt
        return real_step(*args)

    def trained(cache: Path) -> tuple[int, dict[str, torch.Tensor]]:
        threads = torch.get_num_threads()
        try:
            path = training.train(base, examples, cfg, cache, probe=False,
                                  deadline=time.monotonic() + training.export_reserve(10.0) + 85)
        finally:
            torch.set_num_threads(threads)
        return (json.loads((path / training.DONE_MARKER).read_text())["steps"],
                load_file(path / "model.safetensors"))

    reference = trained(tmp_path / "uninterrupted")
    monkeypatch.setattr(training, "_step", step)
    with pytest.raises(Interrupted, match="no checkpoint yet; run again to start over"):
        trained(tmp_path / "stopped")
    resumed = trained(tmp_path / "stopped")
    assert resumed[0] == reference[0] == 12  # its own pace: all fit
    assert all(torch.equal(resumed[1][name], weights) for name, weights in reference[1].items())


# -- ingest and eval: whole batches only, a rerun completes ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_ingest_and_a_rerun_completes(
    model_settings: Settings, identity: EmbedderIdentity, tmp_path: Path, signum: int
) -> None:
    """SIGTERM (timeout, docker stop, a Job deleted) killed it at once, with no line."""
    records = make_records(600)
    corpus = write_jsonl(tmp_path / "papers.jsonl", records)
    data_dir = tmp_path / "index"
    env = cli_env(model_settings, data_dir)

    stopped = run_and_interrupt("ingest", command("ingest", corpus),
                                env | {"PAPERSEARCH_LOG_LEVEL": "DEBUG"}, upserted,
                                "a batch was written", signum=signum)
    found = assert_interrupted(
        stopped, r"ingest: ([\d,]+) papers written by this run; run again to resume")
    written = int(found.group(1).replace(",", ""))

    resumed = json.loads(run_cli(env, "ingest", corpus, "--quiet").stdout)
    # What the message counted is there (a batch written just as Ctrl-C came may add one).
    assert written <= resumed["already_present"] <= written + 8
    assert resumed["already_present"] + resumed["upserted"] == len(records)
    assert resumed["collection_size"] == len(records)
    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, records)


@pytest.mark.slow
def test_ctrl_c_stops_eval_and_a_rerun_completes(
    model_settings: Settings, identity: EmbedderIdentity, tmp_path: Path
) -> None:
    records = make_records(600)
    corpus = write_jsonl(tmp_path / "known-items.jsonl", records)
    eval_dir = tmp_path / "eval"
    env = cli_env(model_settings, tmp_path / "index", PAPERSEARCH_EVAL_DIR=str(eval_dir))
    args = ("eval", "--dataset", corpus, "--mode", "dense", "--json")

    stopped = run_and_interrupt("eval", command(*args), env | {"PAPERSEARCH_LOG_LEVEL": "DEBUG"},
                                upserted, "a batch was written")
    assert_interrupted(stopped, r"eval: [\d,]+ papers written to the \S+ index by this run; "
                                r"run again to resume")

    done = run_cli(env, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queries"] == len(records)
    (collection,) = eval_dir.glob("*/papers")
    with opened(collection.parent, identity) as store:  # known items: documents without titles
        assert store.count() == len(records)
        assert sorted(p.id for p in store.get([r["id"] for r in records])) == \
            sorted(r["id"] for r in records)


# -- models export: no version left behind -----------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_models_export_leaving_no_version(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    env = cli_env(model_settings, tmp_path / "index", PAPERSEARCH_LOG_LEVEL="INFO",
                  PAPERSEARCH_MODELS__REPOSITORY=str(repository))
    stopped = run_and_interrupt(  # a second on: inside torch's ONNX export on this machine
        "models export", command("models", "export"), env,
        lambda text: "checkpoint loaded" in text, "the checkpoint was loaded", delay_s=1.0)
    assert_interrupted(stopped)
    # no version and no staging folder; the lock file stays (held by no one: flock goes with
    # its process)
    leftovers = [p for p in repository.glob("*/*") if p.name != EXPORT_LOCK]
    assert leftovers == [], leftovers


# -- models train-reranker: resumes from its checkpoint, to the uninterrupted weights ----------


def _private_cache(model_settings: Settings, root: Path) -> Path:
    """A model cache of the test's own (its reranker checkpoints) sharing the fetched bundles."""
    cache = root / "cache"
    cache.mkdir()
    for name in ("wheels", "bundles"):
        (cache / name).symlink_to(model_settings.models.cache_dir / name)
    return cache


def _private_repository(model_settings: Settings, embedder_dir: Path, root: Path) -> Path:
    """A model repository holding the session's embedder: the tiny reranker stays out of the
    session's repository, where other tests load the latest reranker."""
    repository = root / "models"
    (repository / embedder_dir.parent.name).mkdir(parents=True)
    (repository / embedder_dir.parent.name / embedder_dir.name).symlink_to(embedder_dir)
    return repository


@pytest.mark.slow
def test_ctrl_c_stops_train_reranker_and_a_rerun_resumes_to_the_same_weights(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path
) -> None:
    from papersearch.modelbuild.prepare import training_examples
    from papersearch.modelbuild.sources import resolve_source
    from papersearch.modelbuild.training import CHECKPOINT_FILE, DONE_MARKER, RESUME_LOCK, train

    cache = _private_cache(model_settings, tmp_path)
    repository = _private_repository(model_settings, embedder_dir, tmp_path)
    checkpoints = cache / "reranker-checkpoints"
    training = {f"PAPERSEARCH_TRAINING__{k.upper()}": json.dumps(v) for k, v in TRAINING.items()}
    env = cli_env(model_settings, tmp_path / "index", **training,
                  PAPERSEARCH_MODELS__REPOSITORY=str(repository),
                  PAPERSEARCH_MODELS__CACHE_DIR=str(cache),
                  PAPERSEARCH_CORPUS_DIR=str(SAMPLE_CORPUS),
                  PAPERSEARCH_LOG_LEVEL="INFO",  # the estimate is an INFO record
                  PAPERSEARCH_TRAINING__CHECKPOINT_EVERY_S="0")  # after every step

    stopped = run_and_interrupt(
        "models train-reranker", command("models", "train-reranker"), env,
        lambda _: any(checkpoints.glob(f"*.resume/{CHECKPOINT_FILE}")), "a checkpoint was saved")
    found = assert_interrupted(stopped, r"train-reranker: (\d+) of (\d+) steps checkpointed; "
                                        r"run again to resume")
    kept, steps = int(found.group(1)), int(found.group(2))
    assert 0 < kept < steps
    probe = re.search(r"train-reranker: [\d,]+ steps, ~([\d.]+) s/step here, about .+ "
                      r"\(resumes from checkpoints; Ctrl-C is safe\)", stopped.stderr)
    assert probe, stopped.stderr[-3000:]
    print(probe.group(0))
    (resume,) = checkpoints.glob("*.resume")
    # no temp file left: the checkpoint and the lock of the runs of its key
    assert sorted(p.name for p in resume.iterdir()) == sorted([CHECKPOINT_FILE, RESUME_LOCK])
    assert not (checkpoints / resume.name.removesuffix(".resume")).exists()

    rerun_env = env | {"PAPERSEARCH_TRAINING__CHECKPOINT_EVERY_S": "3600"}
    done = run_cli(rerun_env, "models", "train-reranker")
    assert done.returncode == 0, done.stderr
    assert f"train-reranker: resuming at step {kept:,}: {steps - kept:,} of {steps:,} steps left" \
        in done.stderr
    assert json.loads(done.stdout)["reranker"].startswith(str(repository))
    (resumed,) = (p for p in checkpoints.iterdir() if (p / DONE_MARKER).is_file())
    assert not resume.exists()  # removed once the run finished

    # The same training uninterrupted, in this process and without the probe step.
    settings = model_settings.model_copy(update={
        "models": model_settings.models.model_copy(update={"repository": repository}),
        "training": TrainingSettings.model_validate(TRAINING),
    })
    base = Path(resolve_source(settings.models.embedder_source, settings.models.cache_dir)
                .location)
    threads = torch.get_num_threads()
    try:
        reference = train(base, training_examples(settings), settings.training,
                          tmp_path / "reference", probe=False)
    finally:
        torch.set_num_threads(threads)
    assert reference.name == resumed.name  # the same checkpoint key: same examples and config
    ours, theirs = (load_file(p / "model.safetensors") for p in (resumed, reference))
    assert ours.keys() == theirs.keys()
    differing = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert differing == []


# -- serve and loadtest: one real Ray instance ------------------------------------------------


def _session_processes(sid: int) -> list[str]:
    """Processes still in the session the command led (Ray's included): pid and name. Not
    zombies: they have exited (an orphan's waits for a PID 1 that may never reap it)."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name_end = text.rindex(")")
        fields = text[name_end + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # state ppid pgrp session ...
            left.append(f"{stat.parent.name} {text[text.index('(') + 1 : name_end]}")
    return left


@pytest.fixture
def ray_temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray socket paths are length-limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_ctrl_c_stops_loadtest_then_serve_leaving_nothing_running(
    sample_settings: Settings, sample_index: Path, reranker_dir: Path, ray_temp_dir: Path,
    tmp_path: Path,
) -> None:
    from papersearch.client import SearchClient

    port, closed = free_port(), f"127.0.0.1:{free_port()}"
    env = cli_env(sample_settings, sample_index, PAPERSEARCH_LOG_LEVEL="INFO",
                  PAPERSEARCH_SERVE__GRPC_PORT=str(port),
                  PAPERSEARCH_SERVE__DASHBOARD_PORT=str(free_port()),
                  PAPERSEARCH_SERVE__METRICS_PORT=str(free_port()),
                  PAPERSEARCH_SERVE__NUM_CPUS="4", RAY_TMPDIR=str(ray_temp_dir))
    serve, serve_err = start(command("serve"), env)
    try:
        wait_until(serve, serve_err, lambda text: "serve app running" in text, "RUNNING")
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            deadline = time.monotonic() + 120
            while client.health() != "SERVING":
                assert time.monotonic() < deadline, "gateway never became SERVING"
                time.sleep(0.5)

        out = tmp_path / "loadtest"
        loadtest = command("loadtest", "--target", f"127.0.0.1:{port}", "--rate", "10",
                           "--duration", "120", "--no-rerank", "--out", out,
                           "--status-url", f"http://{closed}",
                           "--metrics-url", f"http://{closed}/metrics")
        stopped = run_and_interrupt("loadtest", loadtest, env, lambda _: True, "started",
                                    delay_s=8.0)
        assert_interrupted(stopped, "loadtest: stopped sending; no report written")
        assert not out.exists() or not any(out.iterdir())

        stopped = interrupt(serve, serve_err, "serve")
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert_interrupted(stopped, "serve: stopped; Ray and the Serve app are down")
    deadline = time.monotonic() + 10  # a process exiting as we look is not left running
    while (left := _session_processes(serve.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left



@pytest.mark.slow
def test_serve_waits_for_its_collection_then_sigterm_drains(
    sample_settings: Settings, embedder_dir: Path, ray_temp_dir: Path, tmp_path: Path,
) -> None:
    """Real Ray Serve on an empty data directory: NOT_SERVING (liveness SERVING) and nothing
    created until an UpsertPapers creates the collection; then SIGTERM to the serve process
    alone (as Kubernetes and Docker send it) drains: every search is answered OK or, if it
    reached the gateway after the drain began, refused with UNAVAILABLE before anything was done
    (never CANCELLED or cut off); the process exits 130 after logging the drain. It failed once
    in the fresh-clone CI, 24 of 64 calls not OK, with the codes cut from the report: the
    assertion now names the unexpected ones (the likely cause, refused calls' retries cancelled
    by the server's stop, is test_health_drain's ..._refused_never_cancelled)."""
    import grpc

    from papersearch.client import SearchClient
    from papersearch.corpus.paper import Paper
    from papersearch.pipeline.query import SearchQuery

    port = free_port()
    data_dir = tmp_path / "index"
    env = cli_env(sample_settings, data_dir, PAPERSEARCH_LOG_LEVEL="INFO",
                  PAPERSEARCH_SERVE__GRPC_PORT=str(port),
                  PAPERSEARCH_SERVE__HEALTH_POLL_S="0.5",
                  PAPERSEARCH_SERVE__DASHBOARD_PORT=str(free_port()),
                  PAPERSEARCH_SERVE__METRICS_PORT=str(free_port()),
                  PAPERSEARCH_SERVE__NUM_CPUS="4", RAY_TMPDIR=str(ray_temp_dir))
    serve, serve_err = start(command("serve"), env)
    papers = [Paper(id=f"sigterm-{i}", title=f"Graceful shutdown of search servers {i}",
                    abstract="Draining finishes the requests in flight.") for i in range(8)]
    try:
        wait_until(serve, serve_err, lambda text: "serve app running" in text, "RUNNING")
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            deadline = time.monotonic() + 120
            while client.health("liveness") != "SERVING":
                assert time.monotonic() < deadline, "gateway never answered liveness"
                time.sleep(0.5)
            time.sleep(2.0)  # several readiness polls
            assert client.health() == "NOT_SERVING"
            assert "index not open" in "".join(serve_err)
            assert not (data_dir / sample_settings.index.collection).exists()
            with pytest.raises(grpc.RpcError) as missing:
                client.search(SearchQuery("graceful shutdown", rerank=False))
            assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]

            assert client.upsert(papers).upserted == len(papers)  # writes create it
            while client.health() != "SERVING":
                assert time.monotonic() < deadline + 60, "readiness never recovered"
                time.sleep(0.2)

            def search(_: int) -> tuple[str, float]:
                try:
                    client.search(SearchQuery("graceful shutdown", top_k=5, rerank=False))
                    return "OK", time.monotonic()
                except grpc.RpcError as error:
                    code = error.code().name  # type: ignore[attr-defined]
                    return f"{code}: {error.details()}", time.monotonic()  # type: ignore[attr-defined]

            with ThreadPoolExecutor(64) as pool:
                results = pool.map(search, range(64))
                time.sleep(0.2)  # every call is out, most still in the gateway
                terminated_at = time.monotonic()
                os.kill(serve.pid, signal.SIGTERM)
                outcomes = list(results)
        serve.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    codes = [code for code, _ in outcomes]
    late = sum(1 for code, at in outcomes if at > terminated_at and code == "OK")
    print(f"\nSIGTERM drain: {late} of {len(outcomes)} searches answered OK after SIGTERM, "
          f"{len(outcomes) - codes.count('OK')} refused")
    # refused by the gate, or (a retry late past the drain's quiet wait) finding no server
    others = {code for code in codes if code != "OK" and not (
        code.startswith("UNAVAILABLE") and ("draining" in code or "failed to connect" in code))}
    assert not others, others
    assert "OK" in codes
    stderr = "".join(serve_err)
    assert serve.returncode == 130 and "gateway drained" in stderr, stderr[-3000:]


def test_starting_ray_keeps_the_serve_commands_signal_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ray.init installs a SIGTERM handler that exits at once: `serve` put its own back only
    after the deploy (up to minutes), so a SIGTERM meanwhile skipped the drain (exit 15, no
    "interrupted" line)."""
    import sys

    import ray

    from papersearch.serving.launcher import init_keeping_signals

    def ray_init(**_: object) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    monkeypatch.setattr(ray, "init", ray_init)
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        init_keeping_signals(num_cpus=1)
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_ingest_on_ray_keeps_its_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.init's SIGTERM handler replaced the one that stops a command as Ctrl-C does: a
    SIGTERM during `ingest --ray` was exit 15, with no line saying what was written."""
    import sys

    import ray

    from papersearch.ingest.distributed import ray_cluster

    def ray_init(**_: object) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    monkeypatch.setattr(ray, "init", ray_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with ray_cluster(None):
            assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_the_command_loads_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C in the second or so the command's modules take to load printed a traceback, and
    an onnxruntime import it cut short (an ImportError raised from the KeyboardInterrupt)
    read as a broken install with exit 1; now both are the one line and status 130."""
    import builtins

    from papersearch import console

    real = builtins.__import__

    def loading(failure: Callable[[], None]) -> Callable[..., Any]:
        def imported(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "papersearch.cli":
                failure()
            return real(name, *args, **kwargs)
        return imported

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    def cut_short() -> None:
        try:
            ctrl_c()
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt

    def missing() -> None:
        raise ImportError("No module named 'onnxruntime'")

    for failure in (ctrl_c, cut_short):
        monkeypatch.setattr(builtins, "__import__", loading(failure))
        assert console.main() == interrupts.EXIT_STATUS
        assert capsys.readouterr().err == ("papersearch: interrupted (before it started: "
                                           "nothing was done)\n")
    monkeypatch.setattr(builtins, "__import__", loading(missing))
    with pytest.raises(ImportError, match="onnxruntime"):  # a real one stays itself
        console.main()
    monkeypatch.setattr(builtins, "__import__", real)
    # and an import a command makes later, cut short the same way
    from papersearch import cli

    def importing(*args: Any) -> int:
        cut_short()
        return 0

    monkeypatch.setattr(cli, "_search", importing)
    assert cli.main(["search", "x"]) == interrupts.EXIT_STATUS
    assert capsys.readouterr().err.endswith("papersearch: interrupted\n")

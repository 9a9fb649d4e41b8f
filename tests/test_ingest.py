"""`papersearch ingest` and `search` end to end: real ONNX embedder, real qdrant-edge shard.

Every command runs as a subprocess (``python -m papersearch.cli``), configured only through
``PAPERSEARCH_*`` environment variables, exactly as a user would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from papersearch.encoder.runtime import Encoder
from papersearch.index.edge import MANIFEST, EdgeStore
from papersearch.index.errors import CollectionMissing, StoreError
from papersearch.index.schema import EmbedderIdentity
from papersearch.models.manifest import ProviderUnavailable, read_manifest
from papersearch.models.runtime import CPU_PROVIDER, CUDA_PROVIDER, RuntimeOptions
from papersearch.retriever.retriever import Retriever
from papersearch.settings import IndexSettings, Settings
from tests.ports import free_port

pytestmark = pytest.mark.slow

BATCH_SIZE = 8
CLI_TIMEOUT_S = 300
HOLDER_START_S = 180.0  # Ray's own start gives up after 30 s for the raylet (+ the GCS's)
UPSERT_WAIT_S = 120
# Holds a one-CPU local Ray instance (with argv[1] GPUs declared) until its stdin closes;
# prints its address.
HELD_CLUSTER = """
import shutil, sys, tempfile
import ray
temp_dir = tempfile.mkdtemp(prefix="ps-ray-")  # short: Ray's socket paths are limited
try:
    context = ray.init(num_cpus=1, num_gpus=int(sys.argv[1]), include_dashboard=False,
                       log_to_driver=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
    print(context.address_info["gcs_address"], flush=True)
    sys.stdin.read()
    ray.shutdown(wait_for_processes=True)
finally:
    shutil.rmtree(temp_dir, ignore_errors=True)
"""

# One paper the generator below never comes near, for the search test to find by paraphrase.
TARGET = {
    "id": "bees-0001",
    "title": "Detecting Honeybee Colony Collapse from Acoustic Recordings of the Hive",
    "abstract": (
        "Beekeepers lose many colonies each winter without warning. We place low-cost "
        "microphones inside hives and classify spectrograms of the buzzing with a small "
        "convolutional network, flagging queen loss and impending collapse days before "
        "visual inspection would notice it."
    ),
    "authors": ["Maria Apis", "Karl von Frisch"],
    "published": "2023-05-20",
    "categories": ["eess.AS", "q-bio.PE"],
}
TARGET_QUERY = "using sound recorded inside beehives to spot failing bee colonies early"

METHODS = (
    "Graph Neural Networks", "Sparse Transformers", "Contrastive Pretraining",
    "Diffusion Models", "Bayesian Optimization", "Reinforcement Learning", "Mixture of Experts",
    "Knowledge Distillation", "Variational Autoencoders", "Gradient Boosted Trees",
    "Retrieval-Augmented Generation", "Federated Learning",
)
TASKS = (
    "Protein Structure Prediction", "Machine Translation", "Traffic Forecasting",
    "Code Completion", "Medical Image Segmentation", "Robot Grasping", "Fraud Detection",
    "Weather Nowcasting", "Chip Placement", "Speech Recognition",
)
SETTINGS = (
    "under Distribution Shift", "with Limited Labels", "at Scale", "on Edge Devices",
    "with Noisy Supervision", "in Low-Resource Languages",
)
FINDINGS = (
    "improves accuracy by {n} points over strong baselines",
    "reduces training cost by {n} percent",
    "matches the state of the art with {n} times fewer parameters",
    "closes {n} percent of the gap to an oracle",
)
CATEGORIES = ("cs.LG", "cs.CL", "cs.CV", "cs.RO", "q-bio.BM", "stat.ML", "cs.AR", "physics.ao-ph")
NAMES = (
    "Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov",
    "Donald Knuth", "Frances Allen", "John McCarthy", "Leslie Lamport", "Radia Perlman",
)


def make_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` varied JSON Lines records (the search target among them), optional fields mixed."""
    rng = random.Random(seed)
    combos = [(m, t, s) for m in METHODS for t in TASKS for s in SETTINGS]
    rng.shuffle(combos)
    records: list[dict[str, Any]] = [dict(TARGET)]
    for i, (method, task, setting) in enumerate(combos[: n - 1]):
        finding = rng.choice(FINDINGS).format(n=rng.randint(2, 40))
        record: dict[str, Any] = {
            "id": f"2405.{i:05d}",
            "title": f"{method} for {task} {setting}",
            "abstract": (
                f"We study {task.lower()} {setting.lower()}. Our approach builds on "
                f"{method.lower()} and adds a {rng.choice(['curriculum', 'memory', 'routing'])} "
                f"component tuned on {rng.randint(3, 90)} datasets. Experiments show it "
                f"{finding}. Code and data release number {i}."
            ),
        }
        if i % 3 != 0:
            record["published"] = (date(2021, 1, 1) + timedelta(days=7 * i)).isoformat()
        if i % 4 != 1:
            cats = rng.sample(CATEGORIES, 1 + i % 3)
            record["categories"] = cats if i % 2 else " ".join(cats)  # list or string form
        if i % 5 != 2:
            names = rng.sample(NAMES, 1 + i % 4)
            record["authors"] = names if i % 2 else ", ".join(names)
        if i % 7 == 0:
            record["url"] = f"https://arxiv.org/abs/2405.{i:05d}"
        records.append(record)
    return records


def write_jsonl(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


# -- running the CLI --------------------------------------------------------------------------


def cli_env(model_settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERSEARCH_")}
    env.update(
        PAPERSEARCH_MODELS__REPOSITORY=str(model_settings.models.repository),
        PAPERSEARCH_MODELS__CACHE_DIR=str(model_settings.models.cache_dir),
        PAPERSEARCH_MODELS__BATCH_SIZE=str(BATCH_SIZE),
        PAPERSEARCH_INDEX__DATA_DIR=str(data_dir),
        PAPERSEARCH_SEARCH__RERANK_ENABLED="false",
        PAPERSEARCH_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "papersearch.cli", *map(str, args)]


def run_cli(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


def ingest(env: dict[str, str], *args: str | Path) -> dict[str, Any]:
    done = run_cli(env, "ingest", *args, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@contextmanager
def held_cluster(env: dict[str, str], gpus: int = 0) -> Iterator[str]:
    """A one-CPU local Ray instance declaring ``gpus`` GPUs, held by a process of its own (with
    ``env``, made from this process's: Ray's local environment is conftest's) for the block;
    its GCS address. Started in pytest's own process, ``ray.init`` timed out in CI
    with the raylet never registered ("The current node timed out during startup"), three
    times in two tests: Ray forks its daemons with a ``preexec_fn``, whose child can abort
    before its exec while another thread is inside gRPC (conftest turns gRPC's fork handlers
    off), and before conftest set Ray's environment first, pytest's process could hold token
    auth its Ray's daemons lacked. Connecting a driver forks nothing."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HELD_CLUSTER, str(gpus)], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert holder.stdout is not None
    try:
        started, _, _ = select.select([holder.stdout], [], [], HOLDER_START_S)
        address = holder.stdout.readline().strip() if started else ""
        if not address:  # a hung start ends the test, not CI
            holder.kill()
            pytest.fail(f"the held Ray instance did not start within {HOLDER_START_S:g} s: "
                        f"{holder.communicate(timeout=60)[1]}")
        yield address
    finally:
        try:
            holder.communicate(timeout=120)  # closes its stdin: it shuts Ray down and exits
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@contextmanager
def opened(data_dir: Path, identity: EmbedderIdentity) -> Iterator[EdgeStore]:
    store = EdgeStore(IndexSettings(data_dir=data_dir))
    store.ensure_collection(identity.dim, identity.sha256, create=False)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def identity(embedder_dir: Path) -> EmbedderIdentity:
    manifest = read_manifest(embedder_dir)
    assert manifest.dim
    return EmbedderIdentity(manifest.sha256, manifest.dim)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


def assert_stored_exactly(store: EdgeStore, records: Sequence[dict[str, Any]]) -> None:
    """The index holds these papers and nothing else, each complete (title and full abstract)."""
    assert store.count() == len(records)
    ids = [r["id"] for r in records]
    stored = store.get(ids)
    assert [p.id for p in stored] == ids
    for paper, record in zip(stored, records, strict=True):
        assert paper.title == record["title"]
        assert paper.abstract == record["abstract"]


# -- tests -----------------------------------------------------------------------------------


def test_killed_ingest_resumes_without_duplicates(
    model_settings: Settings, identity: EmbedderIdentity, data_dir: Path, tmp_path: Path
) -> None:
    records = make_records(120)
    corpus = write_jsonl(tmp_path / "papers.jsonl", records)
    env = cli_env(model_settings, data_dir)

    # First run: SIGKILL it as soon as the store reports a written batch.
    debug_env = env | {"PAPERSEARCH_LOG_LEVEL": "DEBUG"}
    proc = subprocess.Popen(
        command("ingest", corpus, "--quiet"), env=debug_env, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    upserted = False
    try:
        deadline = time.monotonic() + UPSERT_WAIT_S
        while not upserted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no upserted batch within {UPSERT_WAIT_S} s:\n{''.join(seen)}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"ingest ended before upserting anything:\n{''.join(seen)}")
            seen.append(line)
            upserted = bool(re.search(r"papersearch\.index\.store: upserted\b", line))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed"

    # Second run resumes: the papers written before the kill are recognised, the rest written.
    resumed = ingest(env, corpus)
    assert resumed["read"] == len(records)
    assert resumed["skipped"] == 0 and resumed["duplicates"] == 0
    assert resumed["already_present"] > 0
    assert resumed["upserted"] > 0, "the killed run had already written everything"
    assert resumed["upserted"] + resumed["already_present"] == len(records)
    assert resumed["collection_size"] == len(records)

    # Third run: nothing left to do, nothing duplicated.
    again = ingest(env, corpus)
    assert again["upserted"] == 0
    assert again["already_present"] == len(records)
    assert again["collection_size"] == len(records)

    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, records)
        by_id = {p.id: p for p in store.get(["2405.00000", "2405.00004", TARGET["id"]])}
        assert by_id[TARGET["id"]].published == date(2023, 5, 20)
        assert by_id[TARGET["id"]].authors == tuple(TARGET["authors"])
        assert by_id["2405.00000"].published is None  # i % 3 == 0: no date given
        spaced = records[5]  # i == 4: categories and authors given as strings
        assert by_id["2405.00004"].categories == tuple(spaced["categories"].split())
        assert by_id["2405.00004"].authors == tuple(spaced["authors"].split(", "))
        assert store.get(["no-such-paper"]) == []


def test_malformed_records_are_skipped_with_their_line(
    model_settings: Settings, identity: EmbedderIdentity, data_dir: Path, tmp_path: Path
) -> None:
    good = make_records(4)
    corpus = write_jsonl(
        tmp_path / "messy.jsonl",
        [
            good[0],                                                          # 1
            '{"id": "broken", "title": "Half a record",',                      # 2: bad JSON
            {"title": "No identifier", "abstract": "This record has no id."},  # 3: missing id
            {"id": "bad-date", "title": "Dated badly", "published": "2024-13-45"},  # 4
            good[1],                                                          # 5
            "",                                                               # 6: blank, ignored
            '["not", "an", "object"]',                                        # 7: not an object
            good[2],                                                          # 8
            good[0] | {"title": "Same id again"},                             # 9: duplicate
            {"id": "empty", "title": " ", "abstract": ""},                    # 10: no text
            good[3],                                                          # 11
        ],
    )
    summary = ingest(cli_env(model_settings, data_dir), corpus)

    assert summary["read"] == 4
    assert summary["upserted"] == 4
    assert summary["duplicates"] == 1
    assert summary["skipped"] == 5
    assert summary["collection_size"] == 4
    skipped = summary["skipped_records"]  # the conflict too, with where its id was read
    assert len(skipped) == 6
    expected = {2: "invalid JSON", 3: "'id'", 4: "not an ISO date", 7: "JSON object",
                9: f"already read at {corpus}:1", 10: "neither title nor abstract"}
    for (line, reason), note in zip(expected.items(), skipped, strict=True):
        assert note.startswith(f"{corpus}:{line}: "), note
        assert reason in note

    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, good)  # the first occurrence of the duplicate wins
        assert store.get(["broken", "bad-date", "empty"]) == []

    # nothing readable at all: an error, not a success (`ingest && search` went on)
    broken = write_jsonl(tmp_path / "broken.jsonl", ['{"id": "broken",', "[1]"])
    done = run_cli(cli_env(model_settings, data_dir), "ingest", broken, "--quiet")
    assert done.returncode == 2 and json.loads(done.stdout)["read"] == 0
    assert (f"no paper read from {broken} (2 records skipped; the first: {broken}:1: "
            "invalid JSON") in done.stderr
    with opened(data_dir, identity) as store:  # the index it found stays as it was
        assert store.count() == 4
    # into no index: none is left behind (`search` answered "0 hits", not "no index at"),
    # nor the folders made for it (the data_dir and its parents, left empty)
    fresh = tmp_path / "new" / "fresh"
    assert run_cli(cli_env(model_settings, fresh), "ingest", broken, "--quiet").returncode == 2
    assert not (tmp_path / "new").exists()
    done = run_cli(cli_env(model_settings, fresh), "search", "anything")
    assert done.returncode == 2 and "no index at" in done.stderr, done.stderr


@pytest.mark.parametrize("stop", [KeyboardInterrupt, StoreError], ids=["ctrl-c", "write-failed"])
def test_a_first_ingest_cut_short_before_any_write_leaves_no_index(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    stop: type[BaseException],
) -> None:
    """A first ingest stopped before its first write (Ctrl-C, a failed write) left the index
    it had created empty; `search` then answered "0 hits" instead of "no index at"."""
    from papersearch import cli, interrupts
    from papersearch.ingest.pipeline import Ingester

    fresh = tmp_path / "fresh"
    for name, value in cli_env(model_settings, fresh).items():
        if name.startswith("PAPERSEARCH_"):
            monkeypatch.setenv(name, value)

    def cut_short(*args: Any, **kwargs: Any) -> tuple[int, int]:
        raise stop("the write failed")

    monkeypatch.setattr(Ingester, "ingest", cut_short)
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(3))
    status = cli.main(["ingest", str(corpus), "--quiet"])
    assert status == (interrupts.EXIT_STATUS if stop is KeyboardInterrupt else 2)
    assert "0 papers written by this run" in capsys.readouterr().err
    done = run_cli(cli_env(model_settings, fresh), "search", "anything")
    assert done.returncode == 2 and "no index at" in done.stderr, done.stderr


def test_an_index_made_for_nothing_in_a_folder_given_empty_is_emptied_not_removed(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path,
) -> None:
    """Into a collection folder given empty as a symbolic link (or a volume's mount point),
    an ingest that read nothing removed the index it made by deleting the folder, which a
    link or a mount point refuses: that error replaced the run's own (no summary, no "no
    paper read") and the empty index stayed ("0 hits"). What the run wrote there is removed,
    the folder kept, as a cut-short open does."""
    elsewhere = tmp_path / "volume"
    elsewhere.mkdir()
    data_dir = tmp_path / "index"
    data_dir.mkdir()
    (data_dir / "papers").symlink_to(elsewhere)
    broken = write_jsonl(tmp_path / "broken.jsonl", ['{"id": "broken",'])
    done = run_cli(cli_env(model_settings, data_dir), "ingest", broken, "--quiet")
    assert done.returncode == 2 and done.stdout, done.stderr
    assert json.loads(done.stdout)["read"] == 0
    assert f"no paper read from {broken}" in done.stderr and "Traceback" not in done.stderr
    assert (data_dir / "papers").is_symlink() and list(elsewhere.iterdir()) == []
    done = run_cli(cli_env(model_settings, data_dir), "search", "anything")
    assert done.returncode == 2 and "no index at" in done.stderr, done.stderr


@pytest.mark.usefixtures("embedder_dir")
def test_a_stop_after_the_run_still_prints_what_it_did(
    model_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C as the run closed its index (after a prune, say) said only "interrupted": the
    summary, with the ids it deleted, was lost."""
    from papersearch import cli, interrupts

    for name, value in cli_env(model_settings, tmp_path / "index").items():
        if name.startswith("PAPERSEARCH_"):
            monkeypatch.setenv(name, value)

    def stopped(store: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_holds_nothing", stopped)
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(3))
    assert cli.main(["ingest", str(corpus), "--quiet"]) == interrupts.EXIT_STATUS
    out, err = capsys.readouterr()
    assert json.loads(out)["upserted"] == 3
    assert "interrupted (ingest: stopped after the run, as the index was closed: the summary " \
        "above says what it did)" in err


@pytest.mark.usefixtures("embedder_dir")
def test_a_failed_ingest_into_a_closed_pipe_keeps_its_status(
    model_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    """`ingest ... | true`: printing the summary hit a closed pipe, and the command exited 0
    with its error line unsaid."""
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    proc = subprocess.Popen(command("ingest", empty, "--quiet"),
                            env=cli_env(model_settings, data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read()
    assert proc.wait(timeout=CLI_TIMEOUT_S) == 2, err
    assert "papersearch: error: no paper read from" in err and "Traceback" not in err


def test_a_rerun_rewrites_changed_papers_and_update_rewrites_all(
    model_settings: Settings, identity: EmbedderIdentity, data_dir: Path, tmp_path: Path
) -> None:
    records = make_records(6)
    corpus = write_jsonl(tmp_path / "papers.jsonl", records)
    env = cli_env(model_settings, data_dir)
    first = ingest(env, corpus)
    assert first["upserted"] == 6 and first["already_present"] == 0

    changed = [dict(r) for r in records]
    changed[2]["abstract"] = "A rewritten abstract about zymurgy, the chemistry of fermentation."
    changed[4]["categories"] = ["cs.DL"]  # metadata only: written again too
    write_jsonl(corpus, changed)

    # a plain rerun writes what changed (it kept the old text and vectors before)
    plain = ingest(env, corpus)
    assert (plain["upserted"], plain["changed"], plain["already_present"]) == (2, 2, 4)
    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, changed)
        hits = Retriever(store).search("zymurgy", None, mode="sparse")  # BM25 re-encoded too
        assert [h.paper.id for h in hits] == [changed[2]["id"]]
    again = ingest(env, corpus)
    assert (again["upserted"], again["changed"], again["already_present"]) == (0, 0, 6)

    updated = ingest(env, corpus, "--update")  # every paper, changed or not
    assert updated["upserted"] == 6 and updated["already_present"] == 0
    assert updated["changed"] is None  # not compared (it said 0: none changed)
    assert updated["collection_size"] == 6
    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, changed)


def test_prune_deletes_the_papers_no_corpus_of_the_run_holds(
    model_settings: Settings, identity: EmbedderIdentity, data_dir: Path, tmp_path: Path
) -> None:
    """A paper removed from a corpus stayed in the index for good; --prune deletes it, keeps
    what any of the run's corpora holds, and deletes nothing when a record was skipped."""
    records = make_records(6)
    env = cli_env(model_settings, data_dir)
    ingest(env, write_jsonl(tmp_path / "all.jsonl", records))
    plain = ingest(env, write_jsonl(tmp_path / "first.jsonl", records[:2]))
    assert plain["pruned"] is None and plain["collection_size"] == 6  # without --prune: kept

    second = write_jsonl(tmp_path / "second.jsonl", records[2:4])
    pruned = ingest(env, tmp_path / "first.jsonl", second, "--prune")
    assert pruned["pruned"] == 2 and pruned["collection_size"] == 4
    assert sorted(pruned["pruned_ids"]) == sorted(r["id"] for r in records[4:])
    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, records[:4])
    assert ingest(env, tmp_path / "first.jsonl", second, "--prune")["pruned"] == 0

    # a record it could not read may be a stored paper: nothing is deleted, the rest ingested
    broken = json.dumps(records[3])[:40]  # a stored paper's line, cut short
    messy = write_jsonl(tmp_path / "messy.jsonl", [*records[:2], broken, records[4]])
    done = run_cli(env, "ingest", messy, "--prune", "--quiet")
    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["upserted"], summary["pruned"], summary["collection_size"]) == (1, None, 5)
    assert "--prune: not pruned: 1 records were skipped" in done.stderr
    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, [*records[:4], records[4]])

    # a corpus emptied (a failed copy) among others: its stored papers stay, and the run fails
    second.write_text("")
    done = run_cli(env, "ingest", tmp_path / "first.jsonl", second, "--prune", "--quiet")
    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["read"], summary["pruned"], summary["collection_size"]) == (2, None, 5)
    assert summary["unread_corpora"] == [f"{second}: the corpus is empty"]
    assert (f"--prune: not pruned: no paper was read from {second}: the corpus is empty"
            in done.stderr)
    with opened(data_dir, identity) as store:
        assert_stored_exactly(store, [*records[:4], records[4]])
    done = run_cli(env, "ingest", tmp_path / "first.jsonl", second, "--quiet")  # no prune
    assert done.returncode == 2 and json.loads(done.stdout)["already_present"] == 2
    assert f"error: no paper read from {second}: the corpus is empty (the other" in done.stderr


def test_ingest_refuses_an_index_built_by_another_embedder(
    model_settings: Settings, identity: EmbedderIdentity, data_dir: Path, tmp_path: Path
) -> None:
    other_sha = "f" * 64
    assert other_sha != identity.sha256
    store = EdgeStore(IndexSettings(data_dir=data_dir))
    store.ensure_collection(identity.dim, other_sha)  # same dim, different embedder
    store.close()
    manifest = (data_dir / "papers" / MANIFEST).read_text()

    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(3))
    done = run_cli(cli_env(model_settings, data_dir), "ingest", corpus, "--quiet")

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("papersearch: error:")]
    assert len(errors) == 1, done.stderr
    assert "embedder" in errors[0] and other_sha[:12] in errors[0]
    assert identity.sha256[:12] in errors[0]
    # Untouched: same identity, no points.
    assert (data_dir / "papers" / MANIFEST).read_text() == manifest
    store = EdgeStore(IndexSettings(data_dir=data_dir))
    store.ensure_collection(identity.dim, other_sha, create=False)
    try:
        assert store.count() == 0
    finally:
        store.close()


@pytest.mark.usefixtures("embedder_dir")
def test_search_cli_finds_a_paraphrased_title(
    model_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    records = make_records(40)
    env = cli_env(model_settings, data_dir)
    assert ingest(env, write_jsonl(tmp_path / "papers.jsonl", records))["upserted"] == 40

    done = run_cli(env, "search", TARGET_QUERY, "--no-rerank", "--json", "--top-k", "5")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["reranked"] is False
    hits = result["hits"]
    assert len(hits) == 5
    assert hits[0]["paper_id"] == TARGET["id"], [h["title"] for h in hits]
    assert hits[0]["title"] == TARGET["title"]
    assert hits[0]["published"] == TARGET["published"]
    assert (hits[0]["abstract"], hits[0]["authors"], hits[0]["categories"], hits[0]["url"]) == (
        TARGET["abstract"], TARGET["authors"], TARGET["categories"], None)
    assert hits[0]["stages"]["dense"] is not None and hits[0]["stages"]["rerank"] is None
    assert len({h["paper_id"] for h in hits}) == 5

    for empty in ("", "   "):
        done = run_cli(env, "search", empty, "--no-rerank", "--json")
        assert done.returncode == 2
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        assert "query must not be empty" in done.stderr



def test_ray_ingest_writes_what_one_process_writes_and_resumes(
    model_settings: Settings, identity: EmbedderIdentity, tmp_path: Path
) -> None:
    """`ingest --ray` on a local Ray instance (two encoder actors, real model): the same
    points, payloads and vectors as the one-process path; a rerun writes nothing."""
    records = make_records(150)
    corpus = write_jsonl(tmp_path / "papers.jsonl", records)
    single = ingest(cli_env(model_settings, tmp_path / "single"), corpus)
    ray_env = cli_env(model_settings, tmp_path / "ray", PAPERSEARCH_INGEST__RAY_ENCODERS="2")
    first = ingest(ray_env, corpus, "--ray")
    assert first["upserted"] == single["upserted"] == len(records)
    with opened(tmp_path / "single", identity) as one, opened(tmp_path / "ray", identity) as ray:
        assert_stored_exactly(ray, records)
        expected, got = one.indexed_since(0, {}), ray.indexed_since(0, {})
        order = {p.id: i for i, p in enumerate(expected.papers)}
        rows = [order[p.id] for p in got.papers]
        assert sorted(rows) == list(range(len(records)))
        assert [expected.papers[r] for r in rows] == got.papers
        np.testing.assert_allclose(got.dense, expected.dense[rows], atol=1e-6)
    again = ingest(ray_env, corpus, "--ray")
    assert (again["upserted"], again["already_present"]) == (0, len(records))

    # A corpus path after --ray would be taken for an address: refused, nothing written.
    done = run_cli(ray_env, "ingest", "--ray", corpus, "--quiet")
    assert done.returncode == 2
    assert "that is a corpus path, not a Ray address" in done.stderr


def test_gpu_encoders_need_the_cuda_provider_and_fail_before_any_write(
    model_settings: Settings, identity: EmbedderIdentity, tmp_path: Path
) -> None:
    """`ingest --ray=ADDRESS` against a Ray cluster that offers a GPU (declared: this machine
    has none) whose workers have the CPU build of onnxruntime: by default the encoders go to
    the GPU, a probe finds no CUDA provider there, and the command stops with one line naming
    onnxruntime-gpu, exit 2, nothing written (and no empty index left: `search` says there is
    none)."""
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(20))
    env = cli_env(model_settings, tmp_path / "gpu")
    with held_cluster(env, gpus=1) as address:
        done = run_cli(env, "ingest", corpus, f"--ray={address}", "--quiet")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert "has no CUDAExecutionProvider" in done.stderr
    assert "install onnxruntime-gpu" in done.stderr
    with pytest.raises(CollectionMissing), opened(tmp_path / "gpu", identity):
        pass


def test_a_provider_this_onnxruntime_lacks_is_refused_by_name(embedder_dir: Path) -> None:
    """The session itself checks too (a GPU actor whose CUDA libraries are missing would
    otherwise run on the CPU without a word): asked for CUDA, the CPU build says what to
    install."""
    if CUDA_PROVIDER in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ProviderUnavailable, match="no CUDAExecutionProvider .*onnxruntime-gpu"):
        Encoder(embedder_dir, RuntimeOptions("fp32", providers=(CUDA_PROVIDER, CPU_PROVIDER)))


def test_user_errors_are_reported_before_any_work(
    model_settings: Settings, embedder_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A mistyped corpus path or an empty query: one clear line, exit 2, no index created."""
    env = cli_env(model_settings, data_dir, PAPERSEARCH_LOG_LEVEL="INFO")
    missing = tmp_path / "no-such-corpus.jsonl"
    done = run_cli(env, "ingest", missing, "--quiet")
    assert done.returncode == 2
    assert done.stderr.strip() == f"papersearch: error: no such corpus file or folder: {missing}"
    assert not data_dir.exists()
    # a file of no known format, after a good one: refused before either is read (the index
    # was created and the first corpus written, with no summary)
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n")
    good = write_jsonl(tmp_path / "good.jsonl", make_records(2))
    done = run_cli(env, "ingest", good, notes, "--quiet")
    assert done.returncode == 2 and "cannot tell the corpus format" in done.stderr
    assert not data_dir.exists()
    # a Ray address where nothing listens: at once (Ray's own connect retried ~14 minutes,
    # the index created and held meanwhile)
    port = free_port()
    done = run_cli(env, "ingest", good, f"--ray=127.0.0.1:{port}", "--quiet")
    assert done.returncode == 2 and done.stderr.strip().startswith(
        f"papersearch: error: no Ray cluster at '127.0.0.1:{port}' to join (nothing answers")
    assert not data_dir.exists()

    # Validated before the reranker (enabled here, never exported) or the index is needed.
    rerank_env = env | {"PAPERSEARCH_SEARCH__RERANK_ENABLED": "true"}
    done = run_cli(rerank_env, "search", " ")
    assert done.returncode == 2
    assert done.stderr.strip() == "papersearch: error: query must not be empty"
    assert not data_dir.exists()

    no_rerank = env | {"PAPERSEARCH_SEARCH__RERANK_ENABLED": "false"}
    done = run_cli(no_rerank, "search", "before any ingest")  # says what makes the index
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"papersearch: error: no index at {data_dir / 'papers'}: papersearch ingest creates it")
    assert not data_dir.exists()


def test_an_ingest_stops_when_a_migration_moves_the_index(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path
) -> None:
    """A pointer swap while an ingest runs (a migration's; written by hand here) stops it at
    the next batch: what it wrote stays, the rest is for a rerun against the live collection
    (after the swap, writes to the old one would be lost at --finish)."""
    from papersearch.corpus.paper import Paper
    from papersearch.index.pointer import EdgePointers, Pointer
    from papersearch.ingest.pipeline import Ingester
    from papersearch.pipeline.factory import IndexMoved, LiveCheck, open_live

    settings = model_settings.model_copy(
        update={"index": IndexSettings(data_dir=tmp_path / "index")})
    encoder, store = open_live(settings, create=True)

    def corpus() -> Iterator[Paper]:
        for i in range(6):
            if i == 2:  # the first batch of two is written: the swap
                EdgePointers(settings.index).write(Pointer("papers-elsewhere", "minilm-l6@1"))
            yield Paper(id=f"moved-{i}", title=f"Paper {i} on tidal power",
                        abstract=f"Abstract {i}.")

    live = LiveCheck(settings, store)
    with store, contextlib.closing(live):
        ingester = Ingester(store, encoder, batch_size=2, check=live)
        with pytest.raises(IndexMoved, match="made papers-elsewhere the live collection while "
                                             "this job wrote to papers: run it again"):
            ingester.ingest(corpus(), progress=False)
        assert ingester.written == 2 and store.count() == 2


def test_no_progress_bar_where_stderr_is_no_terminal(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Into a log (stderr not a terminal) the progress bar of ingest, and of eval's and tune's
    index builds, wrote its every redraw: one line of carriage returns, 10 KB long."""
    from papersearch.ingest.pipeline import Ingester, ingest_paths
    from papersearch.pipeline.factory import open_live

    settings = model_settings.model_copy(
        update={"index": IndexSettings(data_dir=tmp_path / "index")})
    encoder, store = open_live(settings, create=True)
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(4))
    with store:
        ingest_paths([corpus], store, Ingester(store, encoder, batch_size=2), progress=True)
        assert store.count() == 4
    assert "paper/s" not in capfd.readouterr().err


def test_a_stop_just_after_a_write_counts_it(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C in the check after a batch's write: the batch is stored, and the message counted
    one batch fewer than the index holds; after --update, "run again to resume" re-wrote all."""
    from papersearch.ingest.pipeline import Ingester, ingest_paths
    from papersearch.interrupts import Interrupted
    from papersearch.pipeline.factory import open_live

    settings = model_settings.model_copy(
        update={"index": IndexSettings(data_dir=tmp_path / "index")})
    encoder, store = open_live(settings, create=True)
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(6))
    calls = 0

    def check() -> None:  # before and after each write: Ctrl-C after the second batch's
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt

    with store:
        for update in (False, True):
            calls = 0
            ingester = Ingester(store, encoder, batch_size=2, check=check)
            with pytest.raises(Interrupted) as stopped:
                ingest_paths([corpus], store, ingester, update=update, progress=False)
            assert ingester.written == 4 and store.count() == 4
            assert str(stopped.value).startswith("ingest: 4 papers written by this run; ")
        assert "run again without it to add what is missing" in str(stopped.value)


@pytest.mark.usefixtures("embedder_dir")
def test_a_failed_write_counts_the_writes_of_its_batch_before_it(
    model_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch larger than one engine write (models.batch_size > index.upsert_batch_size) was
    counted only when all of it was written: a failed third write said "0 papers written"
    where the index held 4."""
    from papersearch.ingest.pipeline import Ingester, ingest_paths
    from papersearch.pipeline.factory import open_live

    settings = model_settings.model_copy(
        update={"index": IndexSettings(data_dir=tmp_path / "index", upsert_batch_size=2)})
    encoder, store = open_live(settings, create=True)
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(6))
    writes = 0
    write = store._write

    def failing_third(points: Any) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise StoreError("the write failed")
        write(points)

    monkeypatch.setattr(store, "_write", failing_third)
    with store:
        ingester = Ingester(store, encoder, batch_size=6)
        with pytest.raises(StoreError):
            ingest_paths([corpus], store, ingester, progress=False)
        assert ingester.written == 4 == store.count()


def test_ray_workers_without_the_collections_embedder_stop_the_run_in_one_line(
    embedder_dir: Path,
) -> None:
    """Checked by one task placed as an actor, before any actor starts: an actor's own failed
    check had ended the run after ~30 s in a Ray traceback (exit 1)."""
    from papersearch.index.errors import EmbedderMismatch
    from papersearch.ingest.distributed import EncoderPool, check_worker_embedder, ray_cluster
    from papersearch.models.manifest import ModelRef
    from papersearch.settings import ModelSettings

    ref = ModelRef(embedder_dir.parent.name, int(embedder_dir.name))
    models = ModelSettings(repository=embedder_dir.parents[1])
    pool = EncoderPool(1, 1.0, 0.0)
    sha = read_manifest(embedder_dir).sha256
    with held_cluster(dict(os.environ)) as address, ray_cluster(address):
        check_worker_embedder(pool, models, ref, sha)  # the same model: passes
        with pytest.raises(EmbedderMismatch, match=rf"{embedder_dir} \(sha256 {sha[:12]}\) is "
                                                   r"not the model .* \(sha256 ffffffffffff\)"):
            check_worker_embedder(pool, models, ref, "f" * 64)
        with pytest.raises(EmbedderMismatch, match=r"cannot load minilm-l6@99 from .*no "
                                                   r"version 99"):
            check_worker_embedder(pool, models, ModelRef(ref.name, 99), sha)


def test_ray_encoders_are_counted_node_by_node_from_what_is_free() -> None:
    """The pool was sized from ray.cluster_resources(): the cluster's total, so 3 nodes of 3
    CPUs gave 4 actors of 2 CPUs where 3 fit, and CPUs Serve replicas hold counted as free."""
    from papersearch.ingest.distributed import EncoderPool, encoder_pool
    from papersearch.settings import IngestSettings

    nodes = [{"CPU": 3.0}] * 3
    two = IngestSettings(ray_cpus_per_encoder=2.0)
    assert encoder_pool(two, {"CPU": 9.0}, nodes) == EncoderPool(3, 2.0, 0.0)
    assert encoder_pool(IngestSettings(), {"CPU": 2.0}, nodes).actors == 2  # 7 held by others
    # all held: one, which waits for room (the probes say if none frees)
    assert encoder_pool(two, {"memory": 1e9}, nodes) == EncoderPool(1, 2.0, 0.0)
    # a GPU actor reserves its CPUs too; GPUs all held are still GPUs: the pool goes there
    gpu_nodes = [{"CPU": 2.0, "GPU": 4.0}, {"CPU": 8.0}]
    assert encoder_pool(IngestSettings(), {"CPU": 10.0, "GPU": 4.0}, gpu_nodes) == EncoderPool(
        2, 1.0, 1.0)
    assert encoder_pool(IngestSettings(), {"CPU": 10.0}, gpu_nodes) == EncoderPool(1, 1.0, 1.0)
    assert encoder_pool(IngestSettings(ray_cpus_per_encoder=0.1), {"CPU": 3.0},
                        [{"CPU": 3.0}]).actors == 30


def test_an_encoder_no_ray_node_can_hold_is_refused_up_front() -> None:
    """Asked for more CPUs (or GPUs) per encoder than any alive node has, the probes waited for
    such a node forever, silently, and the pool counted max(1, 0) = 1 actor all the same."""
    from papersearch.ingest.distributed import NoNodeFits, encoder_pool
    from papersearch.settings import IngestSettings

    with pytest.raises(NoNodeFits, match=r"^no Ray node can hold an encoder: each asks for CPU "
                                         r"2 \(ingest.ray_cpus_per_encoder\) and the alive "
                                         r"nodes have 2 x \(CPU 1\), 1 x \(CPU 0\): ask for"):
        encoder_pool(IngestSettings(ray_cpus_per_encoder=2.0, ray_encoders=4), {"CPU": 2.0},
                     [{"CPU": 1.0}, {"CPU": 0.0}, {"CPU": 1.0}])
    nodes = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 16.0}]  # the GPU's node lacks the CPUs
    for ingest in (IngestSettings(ray_cpus_per_encoder=2.0),
                   IngestSettings(ray_gpus_per_encoder=2.0)):
        with pytest.raises(NoNodeFits, match=r"ray_gpus_per_encoder\) and the alive nodes "
                                             r"have 1 x \(CPU 1, GPU 1\), 1 x \(CPU 16\)"):
            encoder_pool(ingest, {"CPU": 17.0, "GPU": 1.0}, nodes)


def test_ray_workers_check_the_files_their_precision_loads(
    embedder_dir: Path, tmp_path: Path
) -> None:
    """The workers' probe checked the fp32 graph alone: a damaged tokenizer.json, or on CPUs
    model.int8.onnx, ended the run in an actor's traceback instead of the probe's one line."""
    from papersearch.ingest.distributed import worker_embedder
    from papersearch.models.manifest import INT8_FILE, TOKENIZER_FILE, ModelCorrupt, ModelRef

    ref = ModelRef(embedder_dir.parent.name, int(embedder_dir.name))
    for damaged, checked_by in ((TOKENIZER_FILE, ("fp32", "int8")), (INT8_FILE, ("int8",))):
        repository = tmp_path / damaged
        version = repository / ref.name / str(ref.version)
        version.mkdir(parents=True)
        for file in embedder_dir.iterdir():
            if file.name == damaged:
                (version / damaged).write_bytes(file.read_bytes()[:-1])
            else:
                (version / file.name).symlink_to(file)
        for precision in ("fp32", "int8"):
            if precision not in checked_by:
                assert worker_embedder(str(repository), ref, precision)[0] == str(version)
                continue
            with pytest.raises(ModelCorrupt, match=rf"{ref}: {damaged} has sha256 \w+ where "):
                worker_embedder(str(repository), ref, precision)


def test_ray_encoders_that_keep_dying_stop_the_run_in_one_line(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """An encoder actor killed on every batch (out of memory, say) was restarted by Ray Data
    for as long as the run was left (20 times in 90 s, no paper written, no word said): now
    ACTOR_RESTARTS times, then one line, exit 2."""
    from papersearch import cli
    from papersearch.ingest import distributed

    inits = tmp_path / "inits"

    class Killed:  # defined here: Ray sends it by value
        def __init__(self, *args: object) -> None:
            with inits.open("a") as out:
                out.write(f"{os.getpid()}\n")

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            os.kill(os.getpid(), signal.SIGKILL)
            return batch

    env = cli_env(model_settings, tmp_path / "index")
    for name, value in env.items():
        if name.startswith("PAPERSEARCH_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "EncodeActor", Killed)
    corpus = write_jsonl(tmp_path / "papers.jsonl", make_records(20))
    with held_cluster(env) as address:
        status = cli.main(["ingest", str(corpus), f"--ray={address}", "--quiet"])
    assert status == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"papersearch: error: a Ray encoder actor's worker process died "
        f"{distributed.ACTOR_RESTARTS + 1} times (killed out of memory, most likely): set "
        "models.batch_size lower, or give each encoder more memory (a larger "
        "ingest.ray_cpus_per_encoder puts fewer on a node); the workers' Ray logs say more")
    assert len(inits.read_text().splitlines()) == distributed.ACTOR_RESTARTS + 1


def test_ray_probes_that_find_no_room_say_so(
    embedder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probes placed as encoders waited, silently and for ever, while other work (Serve
    replicas) held the resources an encoder asks for."""
    import ray

    from papersearch.ingest import distributed
    from papersearch.ingest.distributed import (
        EncoderPool,
        NoRoom,
        check_worker_embedder,
        ray_cluster,
    )
    from papersearch.models.manifest import ModelRef
    from papersearch.settings import ModelSettings

    @ray.remote(num_cpus=1)
    class Holder:  # the cluster's one CPU, held
        def ready(self) -> bool:
            return True

    ref = ModelRef(embedder_dir.parent.name, int(embedder_dir.name))
    models = ModelSettings(repository=embedder_dir.parents[1])
    sha, pool = read_manifest(embedder_dir).sha256, EncoderPool(1, 1.0, 0.0)
    monkeypatch.setattr(distributed, "PROBE_TIMEOUT_S", 3.0)
    with held_cluster(dict(os.environ)) as address, ray_cluster(address):
        holder = Holder.remote()  # type: ignore[attr-defined]
        assert ray.get(holder.ready.remote(), timeout=60)
        with pytest.raises(NoRoom, match=r"^no Ray node freed the resources of an encoder "
                                         r"\(CPU 1\) within 3 s \(free now: CPU 0\): other "
                                         r"work holds them \(Serve replicas, say\)"):
            check_worker_embedder(pool, models, ref, sha)
        ray.kill(holder)
        monkeypatch.setattr(distributed, "PROBE_TIMEOUT_S", 60.0)
        check_worker_embedder(pool, models, ref, sha)  # room again: passes

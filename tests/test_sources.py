"""Model sources and the versioned model repository (fast, no models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from papersearch.modelbuild.sources import ModelSourceError, resolve_source
from papersearch.models.manifest import (
    Manifest,
    ModelNotFound,
    find_by_fingerprint,
    model_dir,
    next_version_dir,
    write_manifest,
)


def _manifest(version: int, fingerprint: str) -> Manifest:
    return Manifest(name="m", version=version, kind="embedder", source="s",
                    fingerprint=fingerprint, max_length=8, files={"model.onnx": "ab" * 32})


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


def test_hub_id_passes_through(tmp_path: Path) -> None:
    resolved = resolve_source("cross-encoder/ms-marco-MiniLM-L-6-v2", tmp_path)
    assert not resolved.is_local and resolved.location == "cross-encoder/ms-marco-MiniLM-L-6-v2"


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
    write_manifest(second, _manifest(2, "f2"))
    assert model_dir(tmp_path, "m") == second
    assert model_dir(tmp_path, "m", 1) == first
    assert find_by_fingerprint(tmp_path, "m", "f1") == first
    assert find_by_fingerprint(tmp_path, "m", "zz") is None
    with pytest.raises(ModelNotFound, match="no version 7"):
        model_dir(tmp_path, "m", 7)

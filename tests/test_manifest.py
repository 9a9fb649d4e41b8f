"""A damaged manifest is named as such, and the export that mends it is not stopped by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from papersearch.models.manifest import (
    MANIFEST,
    Manifest,
    ModelCorrupt,
    ModelNotFound,
    latest_if_fingerprint,
    model_dir,
    read_manifest,
    write_manifest,
)


def exported(repository: Path) -> Path:
    version = repository / "tiny" / "1"
    version.mkdir(parents=True)
    write_manifest(version, Manifest(name="tiny", version=1, kind="embedder", source="here",
                                     fingerprint="f", max_length=8))
    return version


@pytest.mark.parametrize(("text", "problem"), [
    ('{"name": "tiny", "vers', "Unterminated string"),  # cut short
    ("null", "argument after \\*\\* must be a mapping"),
    ('{"name": "tiny", "version": 1, "future_field": 1}', "unexpected keyword argument"),
    ("\udcff", "can.t decode byte 0xff"),  # written as a lone 0xff byte: not UTF-8
])
def test_a_damaged_manifest_is_named_and_exported_again(tmp_path: Path, text: str,
                                                        problem: str) -> None:
    version = exported(tmp_path)
    assert latest_if_fingerprint(tmp_path, "tiny", "f") == version
    (version / MANIFEST).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ModelCorrupt, match=rf"{version / MANIFEST}: not a readable manifest "
                                           rf"\(.*{problem}.*\): export the model again"):
        read_manifest(version)
    assert latest_if_fingerprint(tmp_path, "tiny", "f") is None  # `models export` goes on


def test_a_missing_model_is_told_how_its_kind_is_made(tmp_path: Path) -> None:
    """A missing reranker led with how to export the embedder (`papersearch models export`,
    which makes no reranker)."""
    from papersearch.reranker.runtime import Reranker
    from papersearch.settings import ModelSettings

    with pytest.raises(ModelNotFound, match=r"'minilm-l6-reranker' in .+: the default reranker "
                                            r"is trained: `papersearch models train-reranker`"):
        Reranker.from_settings(ModelSettings(repository=tmp_path))
    with pytest.raises(ModelNotFound, match=r"`papersearch models export` makes the configured"):
        model_dir(tmp_path, "minilm-l6")

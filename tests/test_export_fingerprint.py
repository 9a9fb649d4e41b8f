"""What a local model folder's export fingerprint covers: every weight, config and tokenizer
file, so one changed in place is exported again rather than found "cached"."""

from __future__ import annotations

from pathlib import Path

import pytest

from papersearch.modelbuild.export import source_digest


def folder(root: Path) -> Path:
    for name, text in {"config.json": "{}", "model-00001-of-00002.safetensors": "a",
                       "model-00002-of-00002.safetensors": "b", "vocab.txt": "x\ny\n",
                       "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
                       "README.md": "about"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("changed", ["model-00002-of-00002.safetensors", "vocab.txt",
                                     "1_Pooling/config.json"])
def test_a_file_the_export_reads_changes_the_digest(tmp_path: Path, changed: str) -> None:
    root = folder(tmp_path)
    before = source_digest(root)
    (root / changed).write_text((root / changed).read_text() + " ")
    assert source_digest(root) != before


def test_names_count_and_other_files_do_not(tmp_path: Path) -> None:
    root = folder(tmp_path)
    before = source_digest(root)
    (root / "README.md").write_text("edited")
    assert source_digest(root) == before
    (root / "vocab.txt").rename(root / "merges.txt")  # same bytes, another file
    assert source_digest(root) != before

"""A damaged manifest is named as such, and the export that mends it is not stopped by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from papersearch.models.manifest import (
    FP32_FILE,
    MANIFEST,
    Manifest,
    ModelCorrupt,
    ModelNotFound,
    latest_if_fingerprint,
    model_dir,
    read_manifest,
    sha256_file,
    write_manifest,
)


def exported(repository: Path) -> Path:
    version = repository / "tiny" / "1"
    version.mkdir(parents=True)
    (version / FP32_FILE).write_bytes(b"graph")
    write_manifest(version, Manifest(name="tiny", version=1, kind="embedder", source="here",
                                     fingerprint="f", max_length=8, dim=2,
                                     files={FP32_FILE: sha256_file(version / FP32_FILE)}))
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


@pytest.mark.parametrize(("edit", "said"), [
    ({"dim": "384"}, 'dim is "384", not int or null'),
    ({"files": None}, "files is null, not dict"),
    ({"max_length": "256"}, 'max_length is "256", not int'),
    ({"max_length": True}, "max_length is true, not int"),
    ({"query_prefix": None}, "query_prefix is null, not str"),
    ({"kind": "tokenizer"}, "kind is 'tokenizer', not embedder or reranker"),
    ({"dim": 0}, "max_length and dim are counts of at least 1"),
    ({"files": {"model.int8.onnx": "ab"}}, "files lists no sha256 of model.onnx"),
    ({"selfcheck": {"threshold": "0.98"}}, 'selfcheck.threshold is "0.98", not a number'),
    ({"version": 2}, r"it is version 2's, in the folder of version 1 \(copied from another"),
    ({"dim": None}, "dim is null, where an embedder's is its vector width"),
    ({"selfcheck": {"reference": [[0.6, 0.8]], "threshold": 0.98}},
     "selfcheck.inputs is not a list of texts"),
    ({"selfcheck": {"inputs": ["a", "b"], "reference": [[0.6, 0.8]], "threshold": 0.98}},
     "selfcheck.reference is not one row of numbers, all of one width, for each of the 2 "
     "inputs"),
    ({"selfcheck": {"inputs": ["a", "b"], "reference": [[0.6, 0.8], [0.6]]}},
     "selfcheck.reference is not one row of numbers, all of one width"),
    ({"selfcheck": {"inputs": ["a", "b"], "reference": [[0.6], [0.8]]}},
     "dim 2, where selfcheck.reference has 1 numbers an input"),
    ({"kind": "reranker", "dim": None, "selfcheck": {"inputs": ["a"], "reference": [[0.5]]}},
     r"selfcheck.inputs is not a list of \(query, passage\) pairs"),
])
def test_a_manifest_with_values_no_export_writes_is_named(tmp_path: Path, edit: dict[str, object],
                                                          said: str) -> None:
    """A manifest edited or damaged to values no export writes failed deep in a search (a
    TypeError traceback, "cannot reshape"), and one copied with its folder named the other
    version in every error: each is ModelCorrupt naming the file, and exported again."""
    import json

    version = exported(tmp_path)
    data = json.loads((version / MANIFEST).read_text())
    (version / MANIFEST).write_text(json.dumps({**data, **edit}))
    with pytest.raises(ModelCorrupt, match=rf"{version / MANIFEST}: {said}"):
        read_manifest(version)
    assert latest_if_fingerprint(tmp_path, "tiny", "f") is None


@pytest.mark.parametrize("edit", [
    {"selfcheck": {"inputs": ["a"], "reference": [[0.6, 0.8]], "threshold": 0.98}},
    {"kind": "reranker", "dim": None,
     "selfcheck": {"inputs": [["q", "p"], ["q", "o"]], "reference": [[1.5], [-2]]}},
    {"selfcheck": {}},  # exported before the self-check existed
])
def test_a_self_check_as_exports_write_it_is_read(tmp_path: Path,
                                                  edit: dict[str, object]) -> None:
    import json

    version = exported(tmp_path)
    data = json.loads((version / MANIFEST).read_text())
    (version / MANIFEST).write_text(json.dumps({**data, **edit}))
    read_manifest(version)


def test_a_missing_model_is_told_how_its_kind_is_made(tmp_path: Path) -> None:
    """A missing reranker led with how to export the embedder (`papersearch models export`,
    which makes no reranker)."""
    from papersearch.reranker.runtime import Reranker
    from papersearch.settings import ModelSettings

    with pytest.raises(ModelNotFound, match=r"'minilm-l6-reranker' under models.repository = "
                                            r".+: the default reranker "
                                            r"is trained: `papersearch models train-reranker`"):
        Reranker.from_settings(ModelSettings(repository=tmp_path))
    with pytest.raises(ModelNotFound, match=r"`papersearch models export` makes the configured"):
        model_dir(tmp_path, "minilm-l6")
    # relative, it is named with where it resolved: run from another folder, the message had
    # said "in models" and its advice exported a second repository there
    with pytest.raises(ModelNotFound) as raised:
        model_dir(Path("no-such-models"), "minilm-l6")
    assert str(raised.value).startswith(
        f"no exported model 'minilm-l6' under models.repository = no-such-models "
        f"({Path('no-such-models').resolve()}): ")


def test_a_latest_export_made_with_other_settings_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A variant exported under the configured name, the settings then switched back (or a
    prefix set and never exported): the latest export was served with no word, and the index's
    error said to switch the embedder back although the settings were back."""
    import logging
    from dataclasses import replace
    from types import SimpleNamespace

    from papersearch.encoder.runtime import unlike_settings, warn_if_not_configured
    from papersearch.pipeline.factory import _export_hint
    from papersearch.settings import Settings

    settings = Settings()
    models = settings.models
    configured = Manifest(name="minilm-l6", version=2, kind="embedder",
                          source=models.embedder_source, fingerprint="f",
                          max_length=models.embedder_max_length, dim=2)
    variant = replace(configured, source="/variants/cls", query_prefix="query: ",
                      quantization={"scheme": "u8u8"})
    assert unlike_settings(configured, models) == []
    assert unlike_settings(variant, models) == ["embedder_source", "query_prefix", "int8_scheme"]
    def said() -> list[logging.LogRecord]:  # its own: another test's leftover threads log too
        return [r for r in caplog.records if r.name == "papersearch.encoder.runtime"]

    with caplog.at_level(logging.WARNING, logger="papersearch.encoder.runtime"):
        warn_if_not_configured(configured, models)
        assert not said()
        warn_if_not_configured(variant, models)
    (record,) = said()
    assert "models.embedder_source, models.query_prefix, models.int8_scheme" in (
        record.getMessage()) and "`papersearch models export`" in record.getMessage()
    assert _export_hint(SimpleNamespace(manifest=configured), settings) == ""  # type: ignore[arg-type]
    assert "minilm-l6@2, was made with other settings" in _export_hint(
        SimpleNamespace(manifest=variant), settings)  # type: ignore[arg-type]

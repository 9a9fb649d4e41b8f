"""What an export records: an embedder with another token limit or prefixes is another model
to the index (its fp32 graph, whose digest a collection records, carries the encoding), and
the int8 verdict it reports is the one a runtime on the same CPU reaches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from papersearch.index.errors import EmbedderMismatch
from papersearch.index.schema import EmbedderIdentity
from papersearch.modelbuild.export import ExportSpec
from papersearch.modelbuild.prepare import export_embedder
from papersearch.modelbuild.sources import ResolvedSource
from papersearch.models.manifest import ENCODING_KEY, FP32_FILE, read_manifest
from papersearch.settings import Settings

pytestmark = pytest.mark.slow


def test_another_token_limit_is_another_identity(model_settings: Settings, embedder_dir: Path,
                                                 tmp_path: Path) -> None:
    import onnx

    default = read_manifest(embedder_dir)
    assert default.max_length == 256 and not default.query_prefix
    assert not onnx.load(str(embedder_dir / FP32_FILE)).metadata_props  # bytes as they were
    shorter = model_settings.model_copy(update={"models": model_settings.models.model_copy(
        update={"repository": tmp_path, "embedder_max_length": 128})})
    manifest = read_manifest(export_embedder(shorter))
    assert manifest.max_length == 128 and manifest.sha256 != default.sha256
    props = {p.key: p.value for p in onnx.load(
        str(tmp_path / manifest.name / str(manifest.version) / FP32_FILE)).metadata_props}
    assert json.loads(props[ENCODING_KEY]) == {"max_length": 128, "query_prefix": "",
                                               "document_prefix": ""}
    with pytest.raises(EmbedderMismatch):  # a collection the default built refuses it
        EmbedderIdentity(manifest.sha256, 384).require(
            EmbedderIdentity(default.sha256, 384), "index")


def test_the_exports_int8_verdict_is_the_runtimes(embedder_dir: Path) -> None:
    """The export judged int8 over all its parity inputs and the runtime over the self-check's
    few: an export could report agreement where its runtimes served fp32, or the reverse."""
    from papersearch.encoder.runtime import Encoder
    from papersearch.models.runtime import RuntimeOptions

    recorded = read_manifest(embedder_dir).parity["int8_self_check"]
    runtime = Encoder(embedder_dir, RuntimeOptions("int8"))
    assert runtime.int8_agreement == pytest.approx(recorded, abs=1e-3)  # threads may differ


def _sentence_transformers_folder(root: Path, lowercase: bool,
                                  sentence_bert: dict[str, object]) -> ResolvedSource:
    """A tiny random BERT whose tokenizer lowercases or not, with a sentence_bert_config.json."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir()
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngraph\nneural\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt"),
                      do_lower_case=lowercase).save_pretrained(root)
    BertModel(BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16)).save_pretrained(root)
    (root / "sentence_bert_config.json").write_text(json.dumps(sentence_bert))
    return ResolvedSource(str(root), str(root), True)


def test_do_lower_case_is_refused_where_the_tokenizer_does_not_lowercase(tmp_path: Path) -> None:
    """A model trained on lowercased texts was served cased ones, and the parity check, fed
    alike on both sides, passed; a tokenizer that lowercases itself is served as it is."""
    from papersearch.modelbuild.export import _load_torch

    cased = _sentence_transformers_folder(tmp_path / "cased", False, {"do_lower_case": True})
    with pytest.raises(ValueError, match="do_lower_case"):
        _load_torch(ExportSpec("m", "embedder", cased, 256))
    for name, lowercase, asked in (("uncased", True, True), ("plain", False, False)):
        source = _sentence_transformers_folder(tmp_path / name, lowercase,
                                               {"do_lower_case": asked})
        _load_torch(ExportSpec("m", "embedder", source, 256))


def test_a_max_length_past_the_models_max_seq_length_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A model trained at 128 tokens was exported at the settings' 256 without a word."""
    from papersearch.modelbuild.export import _load_torch

    source = _sentence_transformers_folder(tmp_path / "short", True, {"max_seq_length": 128})

    def said() -> list[logging.LogRecord]:  # its own: another test's leftover threads log too
        return [r for r in caplog.records if r.name == "papersearch.modelbuild.export"]

    with caplog.at_level(logging.WARNING, logger="papersearch.modelbuild.export"):
        _load_torch(ExportSpec("m", "embedder", source, 128))
        assert not said()
        _load_torch(ExportSpec("m", "embedder", source, 256))
    (record,) = said()
    assert "max_seq_length" in record.getMessage()
    assert (record.__dict__["max_length"], record.__dict__["max_seq_length"]) == (256, 128)


def test_quantizing_without_room_is_a_full_disk_not_a_corrupt_graph(tmp_path: Path) -> None:
    """onnxruntime's quantizer writes a copy of the graph through onnx's C++ shape inference,
    which truncated it silently on a full disk: the export then failed with "Wire format was
    corrupt" in a 30-line traceback. Too little room is said before it starts (ENOSPC: one
    line from the command)."""
    import errno
    import os

    from papersearch.modelbuild.export import _need_room

    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    with pytest.raises(OSError, match=r"MiB needed to quantize, \d+ MiB free") as raised:
        _need_room(tmp_path, free + (1 << 40), "to quantize")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path)
    _need_room(tmp_path, 1, "to quantize")


def _tiny_bert(root: Path, head: bool) -> ResolvedSource:
    """A tiny random BERT saved with a sequence classification head or without one."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    root.mkdir()
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngraph\nneural\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root)
    config = BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=1)
    (BertForSequenceClassification if head else BertModel)(config).save_pretrained(root)
    return ResolvedSource(str(root), str(root), True)


def test_a_reranker_with_no_classification_head_is_refused(tmp_path: Path) -> None:
    """A base model exported as a reranker had its head initialised at random, passed the
    parity check (torch and ONNX shared the random head), and reranked with noise."""
    from papersearch.modelbuild.export import _load_torch

    base = _tiny_bert(tmp_path / "base", head=False)
    with pytest.raises(ValueError, match="classifier.weight.*sequence classification"):
        _load_torch(ExportSpec("r", "reranker", base, 64))
    _load_torch(ExportSpec("r", "reranker", _tiny_bert(tmp_path / "head", head=True), 64))

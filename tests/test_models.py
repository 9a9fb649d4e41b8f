"""The model pipeline: export parity, golden outputs, runtime edge cases, training end to end."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from papersearch.encoder.runtime import Encoder
from papersearch.models.manifest import (
    DEFAULT_ENCODING,
    ENCODING_KEY,
    INT8_FILE,
    Manifest,
    ModelCorrupt,
    ModelNotFound,
    read_manifest,
    sha256_file,
)
from papersearch.models.parity import INT8_MIN_AGREEMENT, SelfCheck
from papersearch.models.runtime import InvalidInput, OnnxModel, RuntimeOptions
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
]


@pytest.fixture(scope="module")
def fp32(embedder_dir: Path) -> Encoder:
    return Encoder(embedder_dir, RuntimeOptions("fp32"))


@pytest.fixture(scope="module")
def int8(embedder_dir: Path) -> Encoder:
    """int8 as served: fp32 on a CPU where the int8 graph fails its self-check."""
    return Encoder(embedder_dir, RuntimeOptions("int8"))


def test_manifest_records_parity_and_identity(embedder_dir: Path) -> None:
    manifest = read_manifest(embedder_dir)
    assert manifest.kind == "embedder" and manifest.dim == 384 and manifest.max_length == 256
    assert manifest.pooling == "mean" and manifest.normalize
    assert manifest.parity["fp32_max_abs_diff"] <= 1e-4
    assert 0 < manifest.parity["int8_cosine_min"] <= 1  # recorded; judged at load, per CPU
    assert manifest.quantization["scheme"] == "u8s8-reduce-range"
    check = SelfCheck.from_dict(manifest.selfcheck)
    assert len(check.inputs) == 8 and check.reference.shape == (8, 384)
    assert check.threshold == INT8_MIN_AGREEMENT
    assert len(manifest.sha256) == 64


def test_self_check_reference_is_the_fp32_graph(embedder_dir: Path, fp32: Encoder) -> None:
    check = SelfCheck.from_dict(read_manifest(embedder_dir).selfcheck)
    np.testing.assert_allclose(fp32.outputs(check.inputs), check.reference, atol=1e-5)
    assert fp32.precision == "fp32" and fp32.int8_agreement is None and fp32.numerics == "fp32"


def test_int8_is_served_only_where_its_self_check_passes(int8: Encoder) -> None:
    assert int8.int8_agreement is not None
    passed = int8.int8_agreement >= INT8_MIN_AGREEMENT
    assert int8.precision == ("int8" if passed else "fp32")
    assert int8.numerics == ("int8" if passed else "fp32")  # what eval collections are keyed by


def _damaged_copy(embedder_dir: Path, target: Path) -> Path:
    """The export with its int8 weights scrambled (a graph that runs but computes nonsense),
    listed in its manifest as exported so: int8 kernels that compute nonsense on a CPU."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(embedder_dir, target)
    graph = onnx.load(str(target / INT8_FILE))
    rng = np.random.default_rng(0)
    scrambled = 0
    for i, tensor in enumerate(graph.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.int8 and values.size > 1000:  # quantized weight matrices
            noise = rng.integers(-63, 64, size=values.shape, dtype=np.int8)
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(noise, tensor.name))
            scrambled += 1
    assert scrambled > 0
    onnx.save(graph, str(target / INT8_FILE))
    _list_in_manifest(target, INT8_FILE)
    return target


def _list_in_manifest(version: Path, name: str) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(version / name)
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_file_changed_after_the_export_is_refused(embedder_dir: Path, tmp_path: Path) -> None:
    """The index trusts the manifest's digest as the model's identity: a graph or tokenizer
    replaced, truncated or edited after the export would serve other vectors under it."""
    version = tmp_path / "minilm" / "1"
    shutil.copytree(embedder_dir, version)
    tokenizer = version / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + " ")
    with pytest.raises(ModelCorrupt, match=r"@1: tokenizer.json has sha256 \w{12} where the "
                                           r"manifest lists \w{12} .+ export the model again"):
        Encoder(version, RuntimeOptions("fp32"))
    shutil.copy(embedder_dir / "tokenizer.json", tokenizer)
    shutil.copy(version / "model.onnx", version / INT8_FILE)  # a graph copied over another
    with pytest.raises(ModelCorrupt, match=f"{INT8_FILE} has sha256"):
        Encoder(version, RuntimeOptions("int8"))
    assert Encoder(version, RuntimeOptions("fp32")).precision == "fp32"  # its own file is fine
    (version / "model.onnx").unlink()
    with pytest.raises(ModelNotFound, match="model.onnx is missing"):  # what callers catch
        Encoder(version, RuntimeOptions("fp32"))


def test_a_manifest_whose_dim_is_not_the_graphs_is_named(embedder_dir: Path,
                                                         tmp_path: Path) -> None:
    """A manifest's dim edited away from its graph's width failed each search with "cannot
    reshape array of size 384 into shape (1,256)", naming no file."""
    import json

    version = tmp_path / "minilm" / "1"
    shutil.copytree(embedder_dir, version)
    manifest = json.loads((version / "manifest.json").read_text())
    (version / "manifest.json").write_text(json.dumps({**manifest, "dim": 256}))
    # the self-check's reference is read first (an export older than it: the graph)
    with pytest.raises(ModelCorrupt, match=rf"{version}/manifest.json: dim 256, where "
                                           r"selfcheck.reference has 384 numbers an input"):
        Encoder(version, RuntimeOptions("fp32"))
    (version / "manifest.json").write_text(json.dumps({**manifest, "dim": 256, "selfcheck": {}}))
    with pytest.raises(ModelCorrupt, match=rf"{version}/manifest.json: dim 256, where "
                                           r"model.onnx gives 384 numbers a text"):
        Encoder(version, RuntimeOptions("fp32"))


@pytest.mark.parametrize("edit", [{"query_prefix": "query: "}, {"max_length": 4}])
def test_a_manifest_whose_encoding_is_not_the_graphs_is_named(
        embedder_dir: Path, tmp_path: Path, edit: dict[str, object]) -> None:
    """A manifest's prefixes or token limit edited fed queries otherwise than the stored
    papers with no error (max_length 4 was blamed on the CPU's int8). The graph records the
    encoding it was exported with (none: the default), and the manifest must say the same;
    an export from before encodings were recorded is taken as it says."""
    import json

    version = tmp_path / "minilm" / "1"
    shutil.copytree(embedder_dir, version)
    manifest = json.loads((version / "manifest.json").read_text())
    (version / "manifest.json").write_text(json.dumps({**manifest, **edit}))
    for precision in ("fp32", "int8"):
        with pytest.raises(ModelCorrupt, match=r"manifest.json: encoding .* where model.*onnx "
                                               r"was exported with \{'max_length': 256"):
            Encoder(version, RuntimeOptions(precision))  # type: ignore[arg-type]
    (version / "manifest.json").write_text(json.dumps(
        {**manifest, **edit, "created": "2026-12-01T09:00:00Z"}))
    assert Encoder(version, RuntimeOptions("fp32")).manifest.encoding != DEFAULT_ENCODING


def test_a_damaged_latest_export_is_exported_again(embedder_dir: Path, tmp_path: Path) -> None:
    """"export the model again" found the damaged version identical by its fingerprint and
    reused it: the error stayed."""
    from papersearch.models.manifest import latest_if_fingerprint

    version = tmp_path / "minilm" / "1"
    shutil.copytree(embedder_dir, version)
    fingerprint = read_manifest(version).fingerprint
    assert latest_if_fingerprint(tmp_path, "minilm", fingerprint) == version
    (version / "tokenizer.json").write_text((version / "tokenizer.json").read_text() + " ")
    assert latest_if_fingerprint(tmp_path, "minilm", fingerprint) is None


def test_pooling_is_read_for_every_source_and_refused_where_unbuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hub id's pooling was read from a local folder of its name (none: mean for every hub
    model, CLS ones included); a max or last-token pooling was exported as mean."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from papersearch.modelbuild.export import ExportSpec, _fingerprint, _pooling
    from papersearch.modelbuild.sources import ResolvedSource

    def folder(name: str, modes: dict[str, bool] | None, normalize: bool = True) -> Path:
        root = tmp_path / name
        (root / "1_Pooling").mkdir(parents=True)
        (root / "config.json").write_text("{}")
        if modes is not None:
            (root / "1_Pooling" / "config.json").write_text(json.dumps(modes))
        modules = [{"type": "sentence_transformers.models.Pooling"}] + (
            [{"type": "sentence_transformers.models.Normalize"}] if normalize else [])
        (root / "modules.json").write_text(json.dumps(modules))
        return root

    def local(root: Path) -> ResolvedSource:
        return ResolvedSource(str(root), str(root), True)

    mean = folder("mean", {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    cls = folder("cls", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
                 normalize=False)
    assert _pooling(local(mean)) == ("mean", True) and _pooling(local(cls)) == ("cls", False)
    assert _pooling(local(folder("bare", None))) == ("mean", True)
    for modes in ({"pooling_mode_max_tokens": True}, {"pooling_mode_lasttoken": True},
                  {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}):
        with pytest.raises(ValueError, match="is not one this export builds"):
            _pooling(local(folder(f"bad{len(list(tmp_path.iterdir()))}", modes)))
    dense = folder("dense", {"pooling_mode_mean_tokens": True})  # LaBSE's, distiluse's shape
    (dense / "modules.json").write_text(json.dumps([
        {"type": "sentence_transformers.models.Transformer"},
        {"type": "sentence_transformers.models.Pooling"},
        {"type": "sentence_transformers.models.Dense"},
        {"type": "sentence_transformers.models.Normalize"}]))
    with pytest.raises(ValueError, match=r"module sentence_transformers.models.Dense is not one "
                                         r"this export builds"):
        _pooling(local(dense))
    # the pooling is part of an export's identity (mean + L2 exports keep their fingerprints)
    spec = ExportSpec("e", "embedder", local(mean), 256)
    assert _fingerprint(spec) != _fingerprint(ExportSpec("e", "embedder", local(cls), 256))
    # a default embedder's fingerprint is as before; a reranker's is not: exported before a
    # two-label model scored its relevant label, it ranked in reverse, and was reused
    hub = ResolvedSource("org/model", "org/model", False)
    before = [hashlib.sha256(json.dumps([hub.spec, kind, 256, "", "", 3]).encode()).hexdigest()
              for kind in ("embedder", "reranker")]
    monkeypatch.setattr("papersearch.modelbuild.export._pooling", lambda source: ("mean", True))
    assert _fingerprint(ExportSpec("m", "embedder", hub, 256)) == before[0]
    assert _fingerprint(ExportSpec("m", "reranker", hub, 256)) != before[1]

    fetched: list[tuple[str, str]] = []

    def hub_download(repo: str, name: str) -> str:  # the hub, as its cache would hold it
        fetched.append((repo, name))
        if not (cls / name).is_file():
            raise EntryNotFoundError(name)
        return str(cls / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    assert _pooling(ResolvedSource("BAAI/bge-small", "BAAI/bge-small", False)) == ("cls", False)
    assert ("BAAI/bge-small", "1_Pooling/config.json") in fetched
    (cls / "modules.json").unlink()
    assert _pooling(ResolvedSource("BAAI/bge-small", "BAAI/bge-small", False)) == ("cls", True)


def test_a_two_label_cross_encoder_scores_its_relevant_label(tmp_path: Path) -> None:
    """A cross-encoder with labels (not relevant, relevant) was exported as its first logit:
    its ranking reversed."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from papersearch.modelbuild.export import CrossEncoderGraph

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=2)
    classifier = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 100, (3, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        logits = classifier(**inputs).logits
        scores = CrossEncoderGraph(classifier, 2)(**inputs)
    torch.testing.assert_close(scores, logits[:, 1] - logits[:, 0])
    with pytest.raises(ValueError, match="this one has 3"):
        CrossEncoderGraph(classifier, 3)


def test_damaged_int8_graph_falls_back_to_fp32(embedder_dir: Path, fp32: Encoder,
                                               tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    damaged = _damaged_copy(embedder_dir, tmp_path / "minilm" / "1")
    with caplog.at_level(logging.WARNING, logger="papersearch.models.runtime"):
        encoder = Encoder(damaged, RuntimeOptions("int8"))
    assert encoder.precision == "fp32"
    assert encoder.int8_agreement is not None and encoder.int8_agreement < INT8_MIN_AGREEMENT
    assert "int8 disagrees with fp32 on this CPU: serving fp32" in caplog.text
    np.testing.assert_allclose(encoder.encode(SENTENCES), fp32.encode(SENTENCES), atol=1e-6)
    unverified = OnnxModel(damaged, RuntimeOptions("int8"), verify_int8=False)
    assert unverified.precision == "int8"  # the damage is real: checked, it is refused
    cosines = np.sum(unverified.outputs(SENTENCES) * fp32.encode(SENTENCES), axis=1)
    assert cosines.min() < INT8_MIN_AGREEMENT


def test_agreement_is_zero_where_outputs_are_not_finite_or_constant() -> None:
    """NaN compares false with any threshold: a NaN agreement must not pass as one."""
    from papersearch.models.parity import agreement

    good = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert agreement("embedder", good, good) == pytest.approx(1.0)
    assert agreement("embedder", good, np.array([[np.nan, 0.0], [0.0, 1.0]])) == 0.0
    scores = np.array([[0.1], [0.5], [0.9]])
    assert agreement("reranker", scores, scores * 3) == pytest.approx(1.0)
    assert agreement("reranker", scores, np.full_like(scores, 0.2)) == 0.0  # constant
    assert agreement("reranker", scores, np.array([[0.1], [np.inf], [0.9]])) == 0.0


def test_a_max_length_past_the_models_positions_is_refused(model_settings: Settings,
                                                          tmp_path: Path) -> None:
    """The parity texts are short: without this check the export passed and the first long
    paper failed at ingest. Nothing is left behind."""
    from papersearch.modelbuild.prepare import export_embedder

    models = model_settings.models.model_copy(
        update={"repository": tmp_path, "embedder_max_length": 1024})
    with pytest.raises(ValueError, match="max_length 1024 is past the 512 positions"):
        export_embedder(model_settings.model_copy(update={"models": models}))
    assert not any(tmp_path.rglob("*.onnx"))


def test_export_without_self_check_serves_fp32(embedder_dir: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "minilm" / "1"
    shutil.copytree(embedder_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["selfcheck"]  # as written before the self-check existed
    (old / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="papersearch.models.runtime"):
        assert Encoder(old, RuntimeOptions("int8")).precision == "fp32"
    assert "int8 not verifiable" in caplog.text


def test_models_info_reports_the_precision_in_use(
    model_settings: Settings, embedder_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from papersearch.cli import main

    monkeypatch.setenv("PAPERSEARCH_MODELS__REPOSITORY", str(model_settings.models.repository))
    monkeypatch.setenv("PAPERSEARCH_MODELS__RERANKER_NAME", "no-such-reranker")
    assert main(["models", "info"]) == 0
    report = json.loads(capsys.readouterr().out)
    embedder = report["embedder"]
    assert embedder["version"] == read_manifest(embedder_dir).version
    assert embedder["sha256"] == read_manifest(embedder_dir).sha256[:12]  # as an index names it
    agreement = embedder["int8_agreement_here"]
    assert embedder["precision"] == ("int8" if agreement >= INT8_MIN_AGREEMENT else "fp32")
    assert "train-reranker" in report["reranker"]["missing"]


def test_fp32_matches_torch_on_fresh_texts(embedder_dir: Path, fp32: Encoder) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from papersearch.modelbuild.sources import resolve_source

    source = resolve_source(read_manifest(embedder_dir).source, ROOT / ".cache" / "papersearch")
    tokenizer = AutoTokenizer.from_pretrained(source.location)
    model = AutoModel.from_pretrained(source.location).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    assert np.abs(fp32.encode(SENTENCES) - reference.numpy()).max() <= 1e-4


def test_golden_outputs(fp32: Encoder, int8: Encoder) -> None:
    vectors = fp32.encode(SENTENCES)
    # all-MiniLM-L6-v2's published similarity for this pair is 0.7553
    assert vectors[0] @ vectors[1] == pytest.approx(0.7553, abs=1e-4)
    assert vectors[0] @ vectors[2] == pytest.approx(-0.0461, abs=1e-4)
    np.testing.assert_allclose(vectors[0][:4], [0.03324, 0.00441, -0.00628, 0.04838], atol=1e-4)
    quantized = int8.encode(SENTENCES)  # as served: int8 only where it passed its self-check
    assert np.all(np.sum(vectors * quantized, axis=1) >= INT8_MIN_AGREEMENT)


def test_vectors_are_normalised_and_order_preserved(fp32: Encoder, int8: Encoder) -> None:
    texts = ["short", "a much longer text " * 30, "medium length text here"]
    together = fp32.encode(texts)
    one_by_one = np.vstack([fp32.encode([t]) for t in texts])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    # As served, an int8 vector depends on its own text only, whatever it is batched with
    # (bit for bit; fp32, where int8 failed its self-check, runs batched: float rounding).
    alone = np.vstack([int8.encode([t]) for t in texts])
    atol = 0.0 if int8.precision == "int8" else 1e-5
    np.testing.assert_allclose(int8.encode(texts), alone, rtol=0, atol=atol)
    crowded = int8.encode([*texts, "another query", "a much longer text " * 60] * 3)
    np.testing.assert_allclose(crowded[:3], alone, rtol=0, atol=atol)


def test_int8_batched_calls_stay_close_to_alone(embedder_dir: Path, int8: Encoder) -> None:
    """Batched int8 calls (models.int8_alone false) quantize activations with one dynamic range
    per call, so a vector moves a little with its batch-mates: it must stay the same vector
    for retrieval purposes."""
    batched = Encoder(embedder_dir, RuntimeOptions("int8", int8_alone=False))
    if batched.precision != "int8":
        pytest.skip("int8 failed its self-check on this CPU: both run fp32")
    assert batched.numerics == "int8-batched32" != int8.numerics
    # another batch size gives other vectors: an eval index keyed without it was reused
    other = Encoder(embedder_dir, RuntimeOptions("int8", batch_size=8, int8_alone=False))
    assert other.numerics == "int8-batched8"
    texts = ["short", "a much longer text " * 30, "medium length text here"]
    alone = np.vstack([int8.encode([t]) for t in texts])
    assert np.all(np.sum(batched.encode(texts) * alone, axis=1) >= INT8_MIN_AGREEMENT)


def test_int8_scheme_can_leave_the_feed_forward_outputs_fp32(embedder_dir: Path,
                                                            tmp_path: Path) -> None:
    """The scheme that keeps each MatMul after a GELU in fp32 (all-mpnet-base-v2's int8 graph
    agrees with fp32 only so) quantizes every other MatMul, and the graph still encodes; an
    export asked for it is another export than the default's."""
    from dataclasses import replace

    import onnx

    from papersearch.modelbuild.export import ExportSpec, _fingerprint, quantize
    from papersearch.modelbuild.sources import ResolvedSource
    from papersearch.models.manifest import FP32_FILE, MANIFEST, TOKENIZER_FILE

    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = ExportSpec("e", "embedder", ResolvedSource(str(folder), str(folder), True), 256)
    other = replace(spec, int8_scheme="u8s8-reduce-range-ffn-out-fp32")
    assert _fingerprint(other) != _fingerprint(spec) == _fingerprint(replace(spec))

    for name in (FP32_FILE, TOKENIZER_FILE, MANIFEST):
        shutil.copy(embedder_dir / name, tmp_path / name)
    quantize(tmp_path / FP32_FILE, tmp_path / INT8_FILE, "u8s8-reduce-range-ffn-out-fp32")
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["quantization"] = {"scheme": "u8s8-reduce-range-ffn-out-fp32"}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    _list_in_manifest(tmp_path, INT8_FILE)
    fp32_graph = onnx.load(str(tmp_path / FP32_FILE)).graph
    producer = {out: node.op_type for node in fp32_graph.node for out in node.output}
    after_gelu = {node.name for node in fp32_graph.node if node.op_type == "MatMul"
                  and "Gelu" in producer.get(node.input[0], "")}
    assert len(after_gelu) == 6  # one per MiniLM layer
    ops = [(node.name, node.op_type) for node in onnx.load(str(tmp_path / INT8_FILE)).graph.node]
    default = [node.op_type for node in onnx.load(str(embedder_dir / INT8_FILE)).graph.node]
    assert {name for name, op in ops if op == "MatMul"} == after_gelu
    assert (sum(op == "MatMulInteger" for _, op in ops)
            == default.count("MatMulInteger") - len(after_gelu) > 0)
    encoder = Encoder(tmp_path, RuntimeOptions("int8"))
    assert encoder.precision == "int8"
    # its vectors are not the default int8 graph's: eval collections are named apart
    assert encoder.numerics == "int8-u8s8-reduce-range-ffn-out-fp32"
    fp32 = Encoder(tmp_path, RuntimeOptions("fp32"))
    assert np.all(np.sum(encoder.encode(SENTENCES) * fp32.encode(SENTENCES), axis=1)
                  >= INT8_MIN_AGREEMENT)


def test_tokenizer_edge_cases(int8: Encoder) -> None:
    for bad in ([""], ["   \n"], ["ok", ""]):
        with pytest.raises(InvalidInput):
            int8.encode(bad)
    # the guard's own message: without it a string is a sequence of characters, and one with
    # a blank (or none) fails later, or not at all, for another reason
    for single in ("not a list", "abc"):
        with pytest.raises(InvalidInput, match="expected a sequence of strings, got a single"):
            int8.encode(single)
    with pytest.raises(InvalidInput):
        int8.encode([None])  # type: ignore[list-item]
    assert int8.encode([]).shape == (0, 384)
    unicode = int8.encode(["Ünïcödé façade", "深度学习的注意力机制", "emoji 🚀 rocket", "Ωμέγα"])
    assert np.isfinite(unicode).all()
    abstract = "Transformers attend to tokens. " * 700  # ~21,000 characters
    assert len(abstract) > 20_000
    long_vec = int8.encode([abstract])
    truncated = int8.encode([" ".join(abstract.split()[:400])])
    np.testing.assert_allclose(long_vec, truncated, atol=1e-5)  # both cut at 256 tokens


def test_compatibility_characters_read_as_what_a_user_types(fp32: Encoder,
                                                            reranker_dir: Path) -> None:
    """The models' tokenizers read texts in their NFKC form, as BM25 does: a ligature or a
    full-width word was one [UNK] token, and its meaning lost from the vector."""
    stored = ["E\ufb03cient \ufb01ne-tuning of \uff22\uff25\uff32\uff34"]
    typed = ["Efficient fine-tuning of BERT"]
    assert fp32.tokenizer.encode(stored[0]).ids == fp32.tokenizer.encode(typed[0]).ids
    np.testing.assert_allclose(fp32.encode(stored), fp32.encode(typed), atol=1e-6)
    reranker = Reranker(reranker_dir, RuntimeOptions("fp32"))
    np.testing.assert_allclose(reranker.score(typed[0], stored), reranker.score(typed[0], typed),
                               atol=1e-6)


def test_query_and_document_modes_use_manifest_prefixes(
    embedder_dir: Path, fp32: Encoder, tmp_path: Path,
) -> None:
    """Queries get the manifest's query_prefix, documents its document_prefix. MiniLM's are
    both empty (its modes give the same vector), so the export is given prefixes (e5's):
    an encoder that ignored or swapped them passed on MiniLM alone."""
    # MiniLM itself: no prefixes, both modes alike
    exported = read_manifest(embedder_dir)
    assert exported.query_prefix == exported.document_prefix == ""
    np.testing.assert_array_equal(fp32.encode_queries(["x y"]), fp32.encode_documents(["x y"]))
    import onnx

    version = tmp_path / "minilm" / "1"
    version.mkdir(parents=True)
    for file in embedder_dir.iterdir():  # the int8 graph and tokenizer as exported
        if file.name not in ("manifest.json", "model.onnx"):
            (version / file.name).symlink_to(file)
    manifest = json.loads((embedder_dir / "manifest.json").read_text())
    manifest.update(query_prefix="query: ", document_prefix="passage: ")
    graph = onnx.load(str(embedder_dir / "model.onnx"))  # as an export with them records them
    onnx.helper.set_model_props(graph, {ENCODING_KEY: json.dumps(Manifest(**manifest).encoding)})
    onnx.save(graph, str(version / "model.onnx"))
    manifest["files"]["model.onnx"] = sha256_file(version / "model.onnx")
    (version / "manifest.json").write_text(json.dumps(manifest))
    prefixed = Encoder(version, RuntimeOptions("fp32"))
    texts = ["t", "graph neural networks"]
    queries, documents = prefixed.encode_queries(texts), prefixed.encode_documents(texts)
    # the same graph, with the prefix written into the text by hand: the same vectors
    by_hand = {prefix: fp32.encode_documents([prefix + t for t in texts])
               for prefix in ("query: ", "passage: ")}
    np.testing.assert_array_equal(queries, by_hand["query: "])
    np.testing.assert_array_equal(documents, by_hand["passage: "])
    # and not the other mode's or the unprefixed vectors (cosines 0.45 to 0.88 here)
    bare = fp32.encode_documents(texts)
    for vectors, other in ((queries, documents), (queries, bare), (documents, bare)):
        assert np.all(np.sum(vectors * other, axis=1) < 0.99)


def test_runtime_works_without_torch(embedder_dir: Path, reranker_dir: Path) -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
sys.modules["transformers"] = None
from papersearch.encoder.runtime import Encoder
from papersearch.reranker.runtime import Reranker
vec = Encoder(__import__("pathlib").Path({str(embedder_dir)!r})).encode(["graph neural networks"])
scores = Reranker(__import__("pathlib").Path({str(reranker_dir)!r})).score("q", ["a", "b"])
assert vec.shape == (1, 384) and scores.shape == (2,)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_trained_reranker_end_to_end(model_settings: Settings, reranker_dir: Path) -> None:
    from papersearch.modelbuild.prepare import training_corpora

    manifest = read_manifest(reranker_dir)
    assert manifest.kind == "reranker"
    assert manifest.parity["fp32_max_abs_diff"] <= 1e-4
    assert SelfCheck.from_dict(manifest.selfcheck).reference.shape == (16, 1)
    assert (reranker_dir / INT8_FILE).is_file()
    reranker = Reranker(reranker_dir, RuntimeOptions("fp32"))
    papers = [p for p in training_corpora(model_settings)[0] if p.title and p.abstract][:40]
    wins = 0
    for i, paper in enumerate(papers):
        other = papers[(i + 7) % len(papers)]
        own, foreign = reranker.score(paper.title, [paper.abstract, other.abstract])
        wins += int(own > foreign)
    assert wins / len(papers) >= 0.8  # learned that a title matches its own abstract


def test_reranker_input_errors(reranker_dir: Path) -> None:
    reranker = Reranker(reranker_dir)
    with pytest.raises(InvalidInput):
        reranker.score("  ", ["passage"])
    with pytest.raises(InvalidInput):
        reranker.score("query", ["fine", ""])
    assert reranker.score("query", []).shape == (0,)
    long = reranker.score("attention", ["attention is all you need " * 2000])
    assert long.shape == (1,) and np.isfinite(long).all()
    # A query longer than the model's max_length (CISI's paragraph queries): cut, not an error.
    paragraph = reranker.score("information retrieval systems " * 200, ["a passage", "another"])
    assert paragraph.shape == (2,) and np.isfinite(paragraph).all()


def test_a_long_reranker_query_is_cut_as_in_training(reranker_dir: Path) -> None:
    """Training cuts a query to query_tokens(max_length) and then only the passage; serving cut
    both evenly (longest_first), so a long query was scored on inputs it never learnt."""
    from papersearch.models.runtime import query_tokens

    reranker = Reranker(reranker_dir)
    limit = reranker.manifest.max_length
    query, passage = "information retrieval systems " * 200, "dense passage retrieval " * 200

    def parts(pair: tuple[str, str]) -> tuple[int, int]:
        (encoding,) = reranker.tokenize([pair])
        assert len(encoding.ids) <= limit
        passage_tokens = sum(encoding.type_ids)  # [SEP]-ended second segment
        return len(encoding.ids) - passage_tokens - 2, passage_tokens - 1

    assert parts((query, passage)) == (query_tokens(limit), limit - 3 - query_tokens(limit))
    short = " ".join(query.split()[:30])  # 30 words: kept whole, the passage fills the rest
    kept, filled = parts((short, passage))
    assert kept == len(reranker.tokenize([(short, "x")])[0].ids) - 4 and kept + filled == limit - 3


def test_int8_rerank_scores_do_not_depend_on_the_other_passages(reranker_dir: Path) -> None:
    reranker = Reranker(reranker_dir)  # int8 where its self-check passes, as served
    passages = ["sparse retrieval with learned term weights", "dense passage retrieval " * 40]
    alone = np.array([reranker.score("neural ranking", [p])[0] for p in passages])
    crowded = reranker.score("neural ranking", [*passages, "an unrelated text " * 80, "more"])
    atol = 0.0 if reranker.precision == "int8" else 1e-5
    np.testing.assert_allclose(crowded[:2], alone, rtol=0, atol=atol)


def test_training_and_export_are_cached(model_settings: Settings, reranker_dir: Path) -> None:
    from papersearch.modelbuild.prepare import train_reranker

    assert train_reranker(model_settings) == reranker_dir  # no second version
    summary = json.loads(next(Path(model_settings.models.cache_dir).glob(
        "reranker-checkpoints/*/training.json")).read_text())
    assert summary["steps"] > 0
    # served with the pair length it was trained at (it was models.reranker_max_length, 256)
    assert read_manifest(reranker_dir).max_length == model_settings.training.max_length == \
        summary["max_length"] != model_settings.models.reranker_max_length


def test_any_hf_cross_encoder_exports_through_the_same_path(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path
) -> None:
    """A Hugging Face format cross-encoder directory (a tiny random BERT) exports and serves."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from papersearch.modelbuild.prepare import export_reranker
    from papersearch.modelbuild.sources import resolve_source

    base = resolve_source(model_settings.models.embedder_source, model_settings.models.cache_dir)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=1,
                        initializer_range=0.2)  # untrained but not degenerate scores
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny-ce")
    AutoTokenizer.from_pretrained(base.location).save_pretrained(tmp_path / "tiny-ce")
    settings = model_settings.model_copy(
        update={"models": model_settings.models.model_copy(update={"reranker_name": "tiny-ce"})}
    )
    exported = export_reranker(settings, str(tmp_path / "tiny-ce"))
    # int8 agreement is recorded, not required: where it falls short, fp32 is served
    assert "int8_score_pearson" in read_manifest(exported).parity
    reranker = Reranker(exported)
    assert reranker.int8_agreement is not None
    scores = reranker.score("query", ["one passage", "another passage"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_export_builds_only_what_the_configuration_serves(
    model_settings: Settings, embedder_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`models export` (what `make run` calls) never trains: with the rerank stage off it makes
    the embedder only; on but without a reranker_source it says how to make one."""
    from papersearch.modelbuild.prepare import prepare

    off = model_settings.model_copy(update={"search": model_settings.search.model_copy(
        update={"rerank_enabled": False})})
    assert prepare(off) == {"embedder": embedder_dir}
    with caplog.at_level(logging.WARNING, logger="papersearch.modelbuild.prepare"):
        assert prepare(model_settings) == {"embedder": embedder_dir}  # rerank stage on
    assert "papersearch models train-reranker" in caplog.text


def test_two_exports_of_one_model_at_once_make_one_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both used to number version 1 and build it in one shared ``1.partial`` folder, the
    second wiping the first's files; now the second waits and reuses the first's version."""
    import threading
    import time

    from papersearch.modelbuild import export as export_module
    from papersearch.modelbuild.sources import ResolvedSource
    from papersearch.models.manifest import Manifest

    def fake_export(spec: export_module.ExportSpec, staging: Path, version: int,
                    fingerprint: str, texts: list[str]) -> Manifest:
        (staging / "model.onnx").write_bytes(b"graph")
        time.sleep(0.3)  # the two exports overlap
        return Manifest(name=spec.name, version=version, kind="embedder", source="s",
                        fingerprint=fingerprint, max_length=8, dim=2,
                        files={"model.onnx": sha256_file(staging / "model.onnx")})

    monkeypatch.setattr(export_module, "_export_into", fake_export)
    monkeypatch.setattr(export_module, "_check_max_length", lambda spec: None)
    from safetensors.numpy import save_file

    (tmp_path / "weights").mkdir()
    save_file({"weight": np.zeros(4, dtype=np.float32)},  # weights there, as an export checks
              str(tmp_path / "weights" / "model.safetensors"))
    spec = export_module.ExportSpec("m", "embedder", ResolvedSource(
        "w", str(tmp_path / "weights"), True), 8)
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(export_module.export(
        spec, tmp_path / "repo", lambda: ["a", "b", "c", "d"]))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [tmp_path / "repo" / "m" / "1"] * 2

    def no_corpus() -> list[str]:  # run elsewhere, ../shared is not there
        raise FileNotFoundError("no such corpus file or folder")

    # an identical export is there: no corpus is read (the command failed without one)
    assert export_module.export(spec, tmp_path / "repo", no_corpus) == made[0]
    assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == [".export.lock", "1"]
    # its manifest edited to another encoding (which every runtime refuses): exported again,
    # where "export cached" had answered
    manifest = made[0] / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"query_prefix": ""',
                                                     '"query_prefix": "q: "'))
    again = export_module.export(spec, tmp_path / "repo", lambda: ["a", "b", "c", "d"])
    assert again == tmp_path / "repo" / "m" / "2"


def test_train_reranker_from_a_hub_id_is_refused_before_mining(tmp_path: Path) -> None:
    """Training loads local weights only: a hub id as the embedder's source failed with a
    relative path's FileNotFoundError after the minutes of mining."""
    from papersearch.modelbuild.prepare import train_reranker

    settings = Settings(models={"embedder_source": "sentence-transformers/all-MiniLM-L6-v2",
                                "cache_dir": tmp_path})
    with pytest.raises(ValueError, match="is a hub id: give a local folder or a pypi: source"):
        train_reranker(settings)


def test_models_info_reports_a_model_it_cannot_use_and_goes_on(embedder_dir: Path) -> None:
    """A reranker name that holds an embedder export ("not a reranker export") failed the
    whole `models info`; it is reported, and the embedder still is."""
    from papersearch.modelbuild.info import describe

    settings = Settings(models={"repository": embedder_dir.parents[1],
                                "embedder_name": embedder_dir.parent.name,
                                "reranker_name": embedder_dir.parent.name})
    report = describe(settings)
    assert "is not a reranker export" in report["reranker"]["unusable"]
    assert report["embedder"]["name"] == embedder_dir.parent.name


def test_models_info_says_a_damaged_export_apart_and_fails(
        embedder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged export was reported as "missing" with exit 0, and the fp32 graph an int8
    runtime falls back to was not checked at all: "damaged", exit 1."""
    import json

    from papersearch.cli import main

    version = tmp_path / embedder_dir.parent.name / "1"
    shutil.copytree(embedder_dir, version)
    for name, value in (("REPOSITORY", tmp_path), ("EMBEDDER_NAME", embedder_dir.parent.name),
                        ("PRECISION", "int8")):
        monkeypatch.setenv(f"PAPERSEARCH_MODELS__{name}", str(value))
    assert main(["models", "info"]) == 0
    assert "missing" in json.loads(capsys.readouterr().out)["reranker"]  # none exported
    with (version / "model.onnx").open("r+b") as graph:
        graph.truncate(1000)
    assert main(["models", "info"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "model.onnx has sha256" in report["embedder"]["damaged"]

"""What an export records: an embedder with another token limit or prefixes is another model
to the index (its fp32 graph, whose digest a collection records, carries the encoding), and
the int8 verdict it reports is the one a runtime on the same CPU reaches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from papersearch.index.errors import EmbedderMismatch
from papersearch.index.schema import EmbedderIdentity
from papersearch.modelbuild.export import ENCODING_KEY
from papersearch.modelbuild.prepare import export_embedder
from papersearch.models.manifest import FP32_FILE, read_manifest
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

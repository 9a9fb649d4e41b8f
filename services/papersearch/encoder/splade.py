"""SPLADE runtime: texts -> sparse vocabulary weights (onnxruntime + tokenizers, no torch).

The exported graph (modelbuild/splade_export.py) already pools: it returns, per text, the
vocabulary-sized vector ``max over tokens of log(1 + relu(MLM logits))``. This module tokenizes,
runs it in length-sorted batches and keeps the non-zero weights of each row. A measured
candidate (benchmarks/splade_candidate.py): nothing that serves a query uses it yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from papersearch.models.runtime import check_texts, padded_feeds, read_tokenizer

GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "splade.json"  # max_length, vocabulary size, source, parity: written last


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Non-zero vocabulary weights of one text, by ascending vocabulary id."""

    indices: np.ndarray  # int32
    values: np.ndarray  # float32, all > 0

    def __len__(self) -> int:
        return len(self.indices)


def to_sparse(rows: np.ndarray) -> list[SparseVector]:
    """Each row of a (texts, vocabulary) weight matrix as its non-zero entries."""
    found = []
    for row in rows:
        (indices,) = np.nonzero(row > 0)
        found.append(SparseVector(indices.astype(np.int32), row[indices].astype(np.float32)))
    return found


class SpladeEncoder:
    """Encodes queries and documents alike (SPLADE uses one model for both)."""

    def __init__(self, export_dir: Path, threads: int = 1, batch_size: int = 8) -> None:
        meta = json.loads((export_dir / META_FILE).read_text())
        self.max_length: int = int(meta["max_length"])
        self.vocab_size: int = int(meta["vocab_size"])
        # A (batch, tokens, vocabulary) float tensor lives inside the graph before pooling:
        # 8 x 256 x 30522 floats are 250 MB, hence a small default batch.
        self.batch_size = batch_size
        self.tokenizer = read_tokenizer(str(export_dir / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(self.max_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(export_dir / GRAPH_FILE), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        # the graph's own inputs: a DistilBERT-based model's has no token_type_ids (the
        # exporter drops an unused input) and refused a feed of them
        self._input_names = {i.name for i in self.session.get_inputs()}

    def weights(self, texts: Sequence[str]) -> np.ndarray:
        """The graph's dense (texts, vocabulary) weights, rows in input order."""
        check_texts(texts, "texts")
        encodings = self.tokenizer.encode_batch(list(texts))
        out = np.zeros((len(texts), self.vocab_size), dtype=np.float32)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            (result,) = self.session.run(
                None, padded_feeds([encodings[i] for i in rows], self._input_names))
            out[rows] = np.asarray(result, dtype=np.float32)
        return out

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        """Sparse weights per text, in input order."""
        vectors: list[SparseVector] = []
        for start in range(0, len(texts), 256):  # bounds the dense rows held at once
            vectors += to_sparse(self.weights(texts[start : start + 256]))
        return vectors

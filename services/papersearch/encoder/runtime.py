"""Bi-encoder runtime: texts -> L2-normalised float32 vectors (onnxruntime, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from papersearch.models.manifest import model_dir
from papersearch.models.runtime import CPU_PROVIDER, OnnxModel, RuntimeOptions, check_texts
from papersearch.settings import ModelSettings

Mode = Literal["query", "document"]


class Encoder(OnnxModel):
    """Embeds queries and documents with the exported bi-encoder.

    Pooling and normalisation live inside the ONNX graph; this class adds the manifest's
    prefixes, truncation and length-sorted batching.
    """

    def __init__(self, version_dir: Path, options: RuntimeOptions | None = None) -> None:
        super().__init__(version_dir, options or RuntimeOptions())
        if self.manifest.kind != "embedder" or self.manifest.dim is None:
            raise ValueError(f"{version_dir} is not an embedder export")
        self.dim: int = self.manifest.dim

    @classmethod
    def from_settings(cls, models: ModelSettings, providers: tuple[str, ...] = (CPU_PROVIDER,)
                      ) -> Encoder:
        path = model_dir(models.repository, models.embedder_name)
        return cls(path, cls.runtime_options(models, providers))

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    def encode(self, texts: Sequence[str], mode: Mode = "document") -> np.ndarray:
        check_texts(texts, f"{mode} texts")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.manifest.query_prefix if mode == "query" else self.manifest.document_prefix
        encodings = self.tokenizer.encode_batch([prefix + t for t in texts])
        return self.run_sorted(encodings, self.dim, lambda x: x)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "query")

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "document")

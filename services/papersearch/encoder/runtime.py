"""Bi-encoder runtime: texts -> L2-normalised float32 vectors (onnxruntime, no torch)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from papersearch.models.manifest import Manifest, model_dir
from papersearch.models.runtime import CPU_PROVIDER, OnnxModel, RuntimeOptions, check_texts
from papersearch.settings import DEFAULT_INT8_SCHEME, ModelSettings

Mode = Literal["query", "document"]

log = logging.getLogger(__name__)


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
        encoder = cls(path, cls.runtime_options(models, providers))
        warn_if_not_configured(encoder.manifest, models)
        return encoder

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


def unlike_settings(manifest: Manifest, models: ModelSettings) -> list[str]:
    """The export options in which ``manifest`` is not what ``models`` configures for the
    embedder (models.embedder_source, ...): the latest version of a name is loaded whatever
    settings made it."""
    configured = {"embedder_source": models.embedder_source,
                  "embedder_max_length": models.embedder_max_length,
                  "query_prefix": models.query_prefix, "document_prefix": models.document_prefix,
                  "int8_scheme": models.int8_scheme}
    exported = {"embedder_source": manifest.source, "embedder_max_length": manifest.max_length,
                "query_prefix": manifest.query_prefix,
                "document_prefix": manifest.document_prefix,
                "int8_scheme": manifest.quantization.get("scheme", DEFAULT_INT8_SCHEME)}
    return [key for key, value in configured.items() if exported[key] != value]


def warn_if_not_configured(manifest: Manifest, models: ModelSettings) -> None:
    """Warn where the configured embedder's latest export was made with other settings (a
    variant exported under the same name, a prefix set and never exported): it was served as
    it is, with no word, and the index's error said to switch the embedder back although the
    settings already were."""
    fields = unlike_settings(manifest, models)
    if fields:
        log.warning("the embedder's latest export was made with other settings than the "
                    f"configured ones ({', '.join(f'models.{f}' for f in fields)}): it is "
                    "served as exported; `papersearch models export` exports the configured "
                    "one", extra={"model": f"{manifest.name}@{manifest.version}"})

"""Cross-encoder runtime: (query, passages) -> relevance scores (onnxruntime, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from papersearch.models.manifest import model_dir
from papersearch.models.runtime import InvalidInput, OnnxModel, RuntimeOptions, check_texts
from papersearch.settings import ModelSettings


class Reranker(OnnxModel):
    """Scores (query, passage) pairs with the exported cross-encoder; higher is more relevant."""

    def __init__(self, version_dir: Path, options: RuntimeOptions | None = None) -> None:
        super().__init__(version_dir, options or RuntimeOptions())
        if self.manifest.kind != "reranker":
            raise ValueError(f"{version_dir} is not a reranker export")

    @classmethod
    def from_settings(cls, models: ModelSettings, version: int | None = None) -> Reranker:
        """The configured reranker's ``version`` (default: the latest)."""
        path = model_dir(models.repository, models.reranker_name, version, kind="reranker")
        return cls(path, cls.runtime_options(models))

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query is empty")
        check_texts(passages, "passages")
        return self.score_pairs([(query, p) for p in passages])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores for many (query, passage) pairs at once: what a batching server calls."""
        for i, (query, passage) in enumerate(pairs):
            check_texts([query, passage], f"pairs[{i}]")
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return self.run_sorted(self.tokenize(pairs), 1, lambda x: x.reshape(-1, 1)).reshape(-1)

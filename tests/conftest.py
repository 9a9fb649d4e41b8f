"""Shared fixtures: real exported models, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from papersearch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE_CORPUS = SHARED / "corpus" / "daily-papers"


@pytest.fixture(scope="session")
def model_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings with a private model repository; the downloaded bundle cache is shared."""
    repository = tmp_path_factory.mktemp("models")
    settings = Settings(
        corpus_dir=SAMPLE_CORPUS,
        models={"repository": repository, "cache_dir": ROOT / ".cache" / "papersearch"},
        training={
            "corpora": [SAMPLE_CORPUS],
            "max_pairs": 48,
            "negatives_per_query": 2,
            "batch_size": 6,
            "max_length": 96,
            "epochs": 3,
            "learning_rate": 1e-4,
        },
    )
    yield settings


@pytest.fixture(scope="session")
def embedder_dir(model_settings: Settings) -> Path:
    from papersearch.models.prepare import export_embedder

    return export_embedder(model_settings)


@pytest.fixture(scope="session")
def reranker_dir(model_settings: Settings, embedder_dir: Path) -> Path:
    """A reranker trained end to end on a slice of the sample corpus (tiny, seconds)."""
    from papersearch.models.prepare import train_reranker

    return train_reranker(model_settings)
